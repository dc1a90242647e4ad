"""LoyaltyToken on an in-process chain: roles, transfers, budgets, idempotent mints and burns, gas.

Ids follow the scheme the contract is cheapest with (see its NatSpec): a 28-byte award prefix
followed by the recipient's 4-byte big-endian index in the award.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.logs import DISCARD
from web3.types import TxReceipt

from tests.contracts.conftest import (
    DEFAULT_ADMIN_ROLE,
    GAS_LIMIT,
    ZERO_ADDRESS,
    deploy_artifact,
    reverts_with,
)

ISSUER_ROLE = Web3.keccak(text="ISSUER_ROLE")
REDEEMER_ROLE = Web3.keccak(text="REDEEMER_ROLE")
EXPIRER_ROLE = Web3.keccak(text="EXPIRER_ROLE")

CAMPAIGN = hashlib.sha256(b"campaign: spring").digest()
CAMPAIGN_BUDGET = 10_000
UNBUDGETED_CAMPAIGN = hashlib.sha256(b"campaign: never budgeted").digest()
REF = hashlib.sha256(b"order 42").digest()
REASON = hashlib.sha256(b"expiry: 12 months").digest()

# The product target: at most 30,000 gas per new holder in a 10,000-holder award, split into
# as few transactions as the 16,777,216-gas per-transaction cap (EIP-7825) allows.
NEW_HOLDER_GAS_TARGET = 30_000
TRANSACTION_GAS_CAP = 16_777_216
AWARD_SIZE = 10_000
# The most new holders one issueBatch fits under the cap as a campaign's first issuance, with
# this module's test data. A contract change that moves it fails
# test_largest_batch_fits_the_transaction_gas_cap: update it here and for the issuing service.
LARGEST_BATCH = 581


def issuance_ids(award: str, count: int, *, start: int = 0) -> list[bytes]:
    """Ids `start` .. `start + count - 1` of `award`: sha256(award)[:28] ‖ uint32 index."""
    prefix = hashlib.sha256(award.encode()).digest()[:28]
    return [prefix + index.to_bytes(4, "big") for index in range(start, start + count)]


def new_holders(count: int, *, start: int = 0) -> list[ChecksumAddress]:
    """`count` distinct addresses that hold no points yet (custodial: nobody needs their keys)."""
    return [
        Web3.to_checksum_address(hashlib.sha256(f"holder {index}".encode()).digest()[:20])
        for index in range(start, start + count)
    ]


def send(call: ContractFunction, *, sender: ChecksumAddress, gas: int = GAS_LIMIT) -> TxReceipt:
    """Send `call` from `sender`; return the receipt of the successful transaction."""
    receipt = call.w3.eth.wait_for_transaction_receipt(call.transact({"from": sender, "gas": gas}))
    assert receipt["status"] == 1, f"{call.fn_name}{call.args} reverted"
    return receipt


def send_expecting_revert(call: ContractFunction, *, sender: ChecksumAddress) -> TxReceipt:
    """Mine `call` from `sender` although it reverts; return the receipt (status 0)."""
    receipt = call.w3.eth.wait_for_transaction_receipt(
        call.transact({"from": sender, "gas": GAS_LIMIT})
    )
    assert receipt["status"] == 0, f"{call.fn_name}{call.args} did not revert"
    return receipt


def deploy_loyalty_token(w3: Web3, *, admin: ChecksumAddress) -> Contract:
    """Deploy a LoyaltyToken from its committed artifact and return it bound to its address."""
    return deploy_artifact(w3, "LoyaltyToken", "Loyalty Points", "PTS", admin, sender=admin)


def issue(
    token: Contract,
    *,
    issuer: ChecksumAddress,
    ids: Sequence[bytes],
    to: Sequence[ChecksumAddress],
    amounts: Sequence[int],
    campaign: bytes = CAMPAIGN,
    gas: int = GAS_LIMIT,
) -> TxReceipt:
    """Send one issueBatch and return its receipt; fail the test if it reverted."""
    call = token.functions.issueBatch(campaign, list(ids), list(to), list(amounts))
    return send(call, sender=issuer, gas=gas)


def balances(token: Contract, holders: Sequence[ChecksumAddress]) -> list[int]:
    """The point balance of each of `holders`."""
    return [token.functions.balanceOf(holder).call() for holder in holders]


def event_args(token: Contract, event_name: str, receipt: TxReceipt) -> list[dict[str, Any]]:
    """The arguments of every `event_name` event in `receipt`, in log order."""
    # DISCARD: the receipt also holds the token's other events, which are not `event_name`.
    events = token.events[event_name]().process_receipt(receipt, errors=DISCARD)
    return [dict(event["args"]) for event in events]


@pytest.fixture
def issuer(w3: Web3) -> ChecksumAddress:
    """accounts[3]: holds ISSUER_ROLE on `token`."""
    return w3.eth.accounts[3]


@pytest.fixture
def redeemer(w3: Web3) -> ChecksumAddress:
    """accounts[4]: holds REDEEMER_ROLE on `token`."""
    return w3.eth.accounts[4]


@pytest.fixture
def expirer(w3: Web3) -> ChecksumAddress:
    """accounts[5]: holds EXPIRER_ROLE on `token`."""
    return w3.eth.accounts[5]


@pytest.fixture
def holder(w3: Web3) -> ChecksumAddress:
    """accounts[6]: holds no role; an account that can send transactions of its own."""
    return w3.eth.accounts[6]


@pytest.fixture
def other_holder(w3: Web3) -> ChecksumAddress:
    """accounts[7]: holds no role; an account that can send transactions of its own."""
    return w3.eth.accounts[7]


@pytest.fixture
def token(
    w3: Web3,
    admin: ChecksumAddress,
    issuer: ChecksumAddress,
    redeemer: ChecksumAddress,
    expirer: ChecksumAddress,
) -> Contract:
    """A LoyaltyToken with one account per role and CAMPAIGN budgeted at CAMPAIGN_BUDGET."""
    # Without a default sender, every eth_call first asks the node for its accounts.
    w3.eth.default_account = admin
    token = deploy_loyalty_token(w3, admin=admin)
    for role, account in (
        (ISSUER_ROLE, issuer),
        (REDEEMER_ROLE, redeemer),
        (EXPIRER_ROLE, expirer),
    ):
        send(token.functions.grantRole(role, account), sender=admin)
    send(token.functions.setCampaignBudget(CAMPAIGN, CAMPAIGN_BUDGET), sender=admin)
    return token


@pytest.fixture
def funded_holder(token: Contract, issuer: ChecksumAddress, holder: ChecksumAddress) -> int:
    """Issue 100 points of CAMPAIGN to `holder`; return the balance."""
    issue(token, issuer=issuer, ids=issuance_ids("fund", 1), to=[holder], amounts=[100])
    return 100


def test_metadata_roles_and_initial_state(
    token: Contract, admin: ChecksumAddress, issuer: ChecksumAddress
) -> None:
    assert token.functions.name().call() == "Loyalty Points"
    assert token.functions.symbol().call() == "PTS"
    assert token.functions.decimals().call() == 0
    assert token.functions.totalSupply().call() == 0
    assert not token.functions.transfersEnabled().call()
    assert token.functions.ISSUER_ROLE().call() == ISSUER_ROLE
    assert token.functions.REDEEMER_ROLE().call() == REDEEMER_ROLE
    assert token.functions.EXPIRER_ROLE().call() == EXPIRER_ROLE
    assert token.functions.hasRole(DEFAULT_ADMIN_ROLE, admin).call()
    for role in (ISSUER_ROLE, REDEEMER_ROLE, EXPIRER_ROLE):
        assert not token.functions.hasRole(role, admin).call()
    assert not token.functions.hasRole(DEFAULT_ADMIN_ROLE, issuer).call()


# Each restricted function, the role it needs, the fixture holding that role and a call that
# succeeds for that holder once `funded_holder` has points.
RESTRICTED_CALLS: dict[str, tuple[bytes, str, Callable[[Contract, ChecksumAddress], Any]]] = {
    "setTransfersEnabled": (
        DEFAULT_ADMIN_ROLE,
        "admin",
        lambda token, _: token.functions.setTransfersEnabled(True),
    ),
    "setCampaignBudget": (
        DEFAULT_ADMIN_ROLE,
        "admin",
        lambda token, _: token.functions.setCampaignBudget(UNBUDGETED_CAMPAIGN, 1),
    ),
    "issueBatch": (
        ISSUER_ROLE,
        "issuer",
        lambda token, holder: token.functions.issueBatch(
            CAMPAIGN, issuance_ids("roles", 1), [holder], [1]
        ),
    ),
    "redeem": (
        REDEEMER_ROLE,
        "redeemer",
        lambda token, holder: token.functions.redeem(b"\x01" * 32, holder, 1, REF),
    ),
    "expire": (
        EXPIRER_ROLE,
        "expirer",
        lambda token, holder: token.functions.expire(b"\x01" * 32, holder, 1, REASON),
    ),
    "expireBatch": (
        EXPIRER_ROLE,
        "expirer",
        lambda token, holder: token.functions.expireBatch([b"\x01" * 32], [holder], [1], REASON),
    ),
}


@pytest.mark.parametrize("function_name", RESTRICTED_CALLS)
def test_each_restricted_function_needs_its_role(
    token: Contract,
    funded_holder: int,
    holder: ChecksumAddress,
    request: pytest.FixtureRequest,
    function_name: str,
) -> None:
    role, role_holder, make_call = RESTRICTED_CALLS[function_name]
    for who in ("admin", "issuer", "redeemer", "expirer", "outsider", "holder"):
        if who == role_holder:
            continue
        sender = request.getfixturevalue(who)
        with reverts_with(token, "AccessControlUnauthorizedAccount", sender, role):
            make_call(token, holder).transact({"from": sender})

    send(make_call(token, holder), sender=request.getfixturevalue(role_holder))


def test_transfers_between_holders_are_disabled_by_default(
    token: Contract,
    funded_holder: int,
    holder: ChecksumAddress,
    other_holder: ChecksumAddress,
) -> None:
    with reverts_with(token, "LoyaltyTokenTransfersDisabled"):
        token.functions.transfer(other_holder, 1).transact({"from": holder})
    send(token.functions.approve(other_holder, 10), sender=holder)
    with reverts_with(token, "LoyaltyTokenTransfersDisabled"):
        token.functions.transferFrom(holder, other_holder, 1).transact({"from": other_holder})

    assert balances(token, [holder, other_holder]) == [funded_holder, 0]


def test_admin_enables_and_disables_transfers(
    token: Contract,
    funded_holder: int,
    admin: ChecksumAddress,
    holder: ChecksumAddress,
    other_holder: ChecksumAddress,
) -> None:
    receipt = send(token.functions.setTransfersEnabled(True), sender=admin)
    assert event_args(token, "TransfersEnabledSet", receipt) == [{"enabled": True}]
    assert token.functions.transfersEnabled().call()

    send(token.functions.transfer(other_holder, 30), sender=holder)
    send(token.functions.approve(other_holder, 10), sender=holder)
    send(token.functions.transferFrom(holder, other_holder, 10), sender=other_holder)
    assert balances(token, [holder, other_holder]) == [funded_holder - 40, 40]

    receipt = send(token.functions.setTransfersEnabled(False), sender=admin)
    assert event_args(token, "TransfersEnabledSet", receipt) == [{"enabled": False}]
    with reverts_with(token, "LoyaltyTokenTransfersDisabled"):
        token.functions.transfer(holder, 1).transact({"from": other_holder})


def test_admin_sets_campaign_budgets(token: Contract, admin: ChecksumAddress) -> None:
    assert token.functions.campaignBudget(UNBUDGETED_CAMPAIGN).call() == 0
    assert token.functions.campaignRemaining(UNBUDGETED_CAMPAIGN).call() == 0

    for budget in (500, 2**256 - 1, 0):
        receipt = send(token.functions.setCampaignBudget(UNBUDGETED_CAMPAIGN, budget), sender=admin)
        assert event_args(token, "CampaignBudgetSet", receipt) == [
            {"campaign": UNBUDGETED_CAMPAIGN, "budget": budget}
        ]
        assert token.functions.campaignBudget(UNBUDGETED_CAMPAIGN).call() == budget
        assert token.functions.campaignIssued(UNBUDGETED_CAMPAIGN).call() == 0
        assert token.functions.campaignRemaining(UNBUDGETED_CAMPAIGN).call() == budget
    assert token.functions.campaignBudget(CAMPAIGN).call() == CAMPAIGN_BUDGET


def test_budget_cannot_be_set_below_what_was_issued(
    token: Contract, admin: ChecksumAddress, issuer: ChecksumAddress
) -> None:
    issue(token, issuer=issuer, ids=issuance_ids("a", 2), to=new_holders(2), amounts=[100, 200])

    with reverts_with(token, "LoyaltyTokenBudgetBelowIssued", CAMPAIGN, 300, 299):
        token.functions.setCampaignBudget(CAMPAIGN, 299).transact({"from": admin})
    assert token.functions.campaignBudget(CAMPAIGN).call() == CAMPAIGN_BUDGET

    send(token.functions.setCampaignBudget(CAMPAIGN, 300), sender=admin)
    assert token.functions.campaignRemaining(CAMPAIGN).call() == 0
    send(token.functions.setCampaignBudget(CAMPAIGN, 1000), sender=admin)
    assert token.functions.campaignIssued(CAMPAIGN).call() == 300
    assert token.functions.campaignRemaining(CAMPAIGN).call() == 700


def test_issue_batch_mints_and_reports_each_issuance(
    token: Contract, issuer: ChecksumAddress
) -> None:
    ids = issuance_ids("award 1", 3)
    holders = new_holders(3)
    amounts = [10, 20, 30]
    call = token.functions.issueBatch(CAMPAIGN, ids, holders, amounts)
    assert call.call({"from": issuer}) == 3

    receipt = send(call, sender=issuer)

    assert balances(token, holders) == amounts
    assert token.functions.totalSupply().call() == 60
    assert token.functions.campaignIssued(CAMPAIGN).call() == 60
    assert token.functions.campaignRemaining(CAMPAIGN).call() == CAMPAIGN_BUDGET - 60
    assert all(token.functions.issued(id_).call() for id_ in ids)
    assert not token.functions.issued(issuance_ids("award 1", 1, start=3)[0]).call()
    assert event_args(token, "Issued", receipt) == [
        {"campaign": CAMPAIGN, "id": id_, "to": to, "amount": amount}
        for id_, to, amount in zip(ids, holders, amounts, strict=True)
    ]
    assert event_args(token, "Transfer", receipt) == [
        {"from": ZERO_ADDRESS, "to": to, "value": amount}
        for to, amount in zip(holders, amounts, strict=True)
    ]


def test_retried_batch_mints_nothing_more(token: Contract, issuer: ChecksumAddress) -> None:
    ids = issuance_ids("award 1", 3)
    holders = new_holders(3)
    call = token.functions.issueBatch(CAMPAIGN, ids, holders, [10, 20, 30])
    send(call, sender=issuer)

    assert call.call({"from": issuer}) == 0
    receipt = send(call, sender=issuer)

    assert receipt["logs"] == []
    assert balances(token, holders) == [10, 20, 30]
    assert token.functions.campaignIssued(CAMPAIGN).call() == 60


def test_partly_overlapping_batch_mints_only_new_ids(
    token: Contract, issuer: ChecksumAddress
) -> None:
    ids = issuance_ids("award 1", 8)
    holders = new_holders(8)
    issue(token, issuer=issuer, ids=ids[:5], to=holders[:5], amounts=[1] * 5)

    call = token.functions.issueBatch(CAMPAIGN, ids[3:], holders[3:], [10] * 5)
    assert call.call({"from": issuer}) == 3
    receipt = send(call, sender=issuer)

    assert balances(token, holders) == [1, 1, 1, 1, 1, 10, 10, 10]
    assert [args["id"] for args in event_args(token, "Issued", receipt)] == ids[5:]
    assert token.functions.campaignIssued(CAMPAIGN).call() == 35


def test_id_repeated_within_a_batch_is_issued_once(
    token: Contract, issuer: ChecksumAddress
) -> None:
    id_a, id_b = issuance_ids("award 1", 2)
    holder_a, holder_b, holder_c = new_holders(3)
    call = token.functions.issueBatch(
        CAMPAIGN, [id_a, id_b, id_a], [holder_a, holder_b, holder_c], [5, 6, 7]
    )
    assert call.call({"from": issuer}) == 2
    send(call, sender=issuer)

    assert balances(token, [holder_a, holder_b, holder_c]) == [5, 6, 0]
    assert token.functions.campaignIssued(CAMPAIGN).call() == 11


def test_issuance_ids_are_shared_by_all_campaigns(
    token: Contract, admin: ChecksumAddress, issuer: ChecksumAddress
) -> None:
    ids = issuance_ids("award 1", 2)
    holders = new_holders(2)
    issue(token, issuer=issuer, ids=ids[:1], to=holders[:1], amounts=[5])
    send(token.functions.setCampaignBudget(UNBUDGETED_CAMPAIGN, 100), sender=admin)

    receipt = issue(
        token, issuer=issuer, ids=ids, to=holders, amounts=[5, 6], campaign=UNBUDGETED_CAMPAIGN
    )

    assert [args["id"] for args in event_args(token, "Issued", receipt)] == ids[1:]
    assert token.functions.campaignIssued(UNBUDGETED_CAMPAIGN).call() == 6


def test_ids_far_apart_each_work(token: Contract, issuer: ChecksumAddress) -> None:
    # Ids sharing no storage word, the first and last bit of a word, and the extremes.
    ids = [
        bytes(32),
        b"\xff" * 32,
        bytes(31) + b"\xff",
        b"\xff" * 31 + b"\x00",
        b"\x80" + bytes(31),
    ]
    holders = new_holders(len(ids))
    issue(token, issuer=issuer, ids=ids, to=holders, amounts=[1] * len(ids))
    assert all(token.functions.issued(id_).call() for id_ in ids)
    assert not token.functions.issued(bytes(31) + b"\x01").call()

    retry = token.functions.issueBatch(CAMPAIGN, ids, holders, [1] * len(ids))
    assert retry.call({"from": issuer}) == 0


@pytest.mark.parametrize("short", ["to", "amounts", "ids"])
def test_batch_arrays_must_have_equal_lengths(
    token: Contract, issuer: ChecksumAddress, short: str
) -> None:
    arrays: dict[str, list[Any]] = {
        "ids": issuance_ids("award 1", 3),
        "to": new_holders(3),
        "amounts": [1, 2, 3],
    }
    arrays[short] = arrays[short][:2]
    with reverts_with(token, "LoyaltyTokenLengthMismatch"):
        token.functions.issueBatch(
            CAMPAIGN, arrays["ids"], arrays["to"], arrays["amounts"]
        ).transact({"from": issuer})


def test_zero_amount_and_zero_address_are_rejected(
    token: Contract, issuer: ChecksumAddress
) -> None:
    ids = issuance_ids("award 1", 2)
    holders = new_holders(2)
    with reverts_with(token, "LoyaltyTokenZeroAmount", ids[1]):
        token.functions.issueBatch(CAMPAIGN, ids, holders, [5, 0]).transact({"from": issuer})
    with reverts_with(token, "LoyaltyTokenZeroAddress", ids[1]):
        token.functions.issueBatch(CAMPAIGN, ids, [holders[0], ZERO_ADDRESS], [5, 6]).transact(
            {"from": issuer}
        )

    # Entries are checked whether or not their id was used before.
    issue(token, issuer=issuer, ids=ids, to=holders, amounts=[5, 6])
    with reverts_with(token, "LoyaltyTokenZeroAmount", ids[0]):
        token.functions.issueBatch(CAMPAIGN, ids, holders, [0, 6]).transact({"from": issuer})


def test_batch_over_the_budget_reverts_as_a_whole(
    token: Contract, admin: ChecksumAddress, issuer: ChecksumAddress
) -> None:
    send(token.functions.setCampaignBudget(CAMPAIGN, 100), sender=admin)
    ids = issuance_ids("award 1", 4)
    holders = new_holders(4)
    issue(token, issuer=issuer, ids=ids[:1], to=holders[:1], amounts=[40])
    call = token.functions.issueBatch(CAMPAIGN, ids, holders, [40, 20, 20, 21])

    with reverts_with(token, "LoyaltyTokenBudgetExceeded", CAMPAIGN, 60, 61):
        call.transact({"from": issuer})
    send_expecting_revert(call, sender=issuer)

    assert balances(token, holders) == [40, 0, 0, 0]
    assert not any(token.functions.issued(id_).call() for id_ in ids[1:])
    assert token.functions.campaignIssued(CAMPAIGN).call() == 40
    assert token.functions.totalSupply().call() == 40

    # Only new issuances count: the same batch fits once the used id's 40 points are left out.
    fitting = token.functions.issueBatch(CAMPAIGN, ids, holders, [40, 20, 20, 20])
    assert fitting.call({"from": issuer}) == 3
    send(fitting, sender=issuer)
    assert token.functions.campaignRemaining(CAMPAIGN).call() == 0


def test_campaign_without_budget_issues_nothing(token: Contract, issuer: ChecksumAddress) -> None:
    ids = issuance_ids("award 1", 2)
    with reverts_with(token, "LoyaltyTokenBudgetExceeded", UNBUDGETED_CAMPAIGN, 0, 3):
        token.functions.issueBatch(UNBUDGETED_CAMPAIGN, ids, new_holders(2), [1, 2]).transact(
            {"from": issuer}
        )

    # A batch whose ids are all used requests nothing, so it passes even without a budget.
    issue(token, issuer=issuer, ids=ids, to=new_holders(2), amounts=[1, 2])
    receipt = issue(
        token,
        issuer=issuer,
        ids=ids,
        to=new_holders(2),
        amounts=[1, 2],
        campaign=UNBUDGETED_CAMPAIGN,
    )
    assert receipt["logs"] == []


def test_redeem_burns_once_per_id(
    token: Contract, funded_holder: int, redeemer: ChecksumAddress, holder: ChecksumAddress
) -> None:
    redemption_id = hashlib.sha256(b"redemption 1").digest()
    assert not token.functions.burned(redemption_id).call()

    receipt = send(token.functions.redeem(redemption_id, holder, 30, REF), sender=redeemer)

    assert balances(token, [holder]) == [funded_holder - 30]
    assert token.functions.totalSupply().call() == funded_holder - 30
    assert token.functions.burned(redemption_id).call()
    assert event_args(token, "Redeemed", receipt) == [
        {"id": redemption_id, "from": holder, "amount": 30, "ref": REF}
    ]
    assert event_args(token, "Transfer", receipt) == [
        {"from": holder, "to": ZERO_ADDRESS, "value": 30}
    ]
    # Burning leaves the campaign's issuance count, and so its remaining budget, alone.
    assert token.functions.campaignIssued(CAMPAIGN).call() == funded_holder

    with reverts_with(token, "LoyaltyTokenIdUsed", redemption_id):
        token.functions.redeem(redemption_id, holder, 1, REF).transact({"from": redeemer})
    assert balances(token, [holder]) == [funded_holder - 30]


def test_redeem_rejects_more_than_the_balance_and_empty_entries(
    token: Contract, funded_holder: int, redeemer: ChecksumAddress, holder: ChecksumAddress
) -> None:
    redemption_id = hashlib.sha256(b"redemption 1").digest()
    redeem = token.functions.redeem
    with reverts_with(token, "ERC20InsufficientBalance", holder, funded_holder, funded_holder + 1):
        redeem(redemption_id, holder, funded_holder + 1, REF).transact({"from": redeemer})
    with reverts_with(token, "LoyaltyTokenZeroAmount", redemption_id):
        redeem(redemption_id, holder, 0, REF).transact({"from": redeemer})
    with reverts_with(token, "LoyaltyTokenZeroAddress", redemption_id):
        redeem(redemption_id, ZERO_ADDRESS, 1, REF).transact({"from": redeemer})

    # None of the rejected calls used the id.
    assert not token.functions.burned(redemption_id).call()
    send(redeem(redemption_id, holder, funded_holder, REF), sender=redeemer)
    assert balances(token, [holder]) == [0]


def test_expire_burns_once_per_id(
    token: Contract,
    funded_holder: int,
    expirer: ChecksumAddress,
    redeemer: ChecksumAddress,
    holder: ChecksumAddress,
) -> None:
    expiry_id, redemption_id = (hashlib.sha256(f"burn {i}".encode()).digest() for i in range(2))

    receipt = send(token.functions.expire(expiry_id, holder, 25, REASON), sender=expirer)

    assert balances(token, [holder]) == [funded_holder - 25]
    assert token.functions.burned(expiry_id).call()
    assert event_args(token, "Expired", receipt) == [
        {"id": expiry_id, "from": holder, "amount": 25, "reason": REASON}
    ]
    assert event_args(token, "Transfer", receipt) == [
        {"from": holder, "to": ZERO_ADDRESS, "value": 25}
    ]
    with reverts_with(token, "LoyaltyTokenIdUsed", expiry_id):
        token.functions.expire(expiry_id, holder, 25, REASON).transact({"from": expirer})
    with reverts_with(token, "ERC20InsufficientBalance", holder, funded_holder - 25, funded_holder):
        token.functions.expire(redemption_id, holder, funded_holder, REASON).transact(
            {"from": expirer}
        )

    # Redemptions and expiries share one id space: a burn id works once, whichever burns it.
    send(token.functions.redeem(redemption_id, holder, 5, REF), sender=redeemer)
    with reverts_with(token, "LoyaltyTokenIdUsed", redemption_id):
        token.functions.expire(redemption_id, holder, 5, REASON).transact({"from": expirer})
    with reverts_with(token, "LoyaltyTokenIdUsed", expiry_id):
        token.functions.redeem(expiry_id, holder, 5, REF).transact({"from": redeemer})


def test_expire_batch_skips_used_ids(
    token: Contract, issuer: ChecksumAddress, expirer: ChecksumAddress
) -> None:
    holders = new_holders(4)
    issue(token, issuer=issuer, ids=issuance_ids("award 1", 4), to=holders, amounts=[10] * 4)
    expiry_ids = issuance_ids("expiry run 1", 4)

    first = token.functions.expireBatch(expiry_ids[:2], holders[:2], [3, 4], REASON)
    assert first.call({"from": expirer}) == 2
    receipt = send(first, sender=expirer)
    assert balances(token, holders) == [7, 6, 10, 10]
    assert event_args(token, "Expired", receipt) == [
        {"id": expiry_ids[0], "from": holders[0], "amount": 3, "reason": REASON},
        {"id": expiry_ids[1], "from": holders[1], "amount": 4, "reason": REASON},
    ]

    overlapping = token.functions.expireBatch(expiry_ids, holders, [3, 4, 5, 6], REASON)
    assert overlapping.call({"from": expirer}) == 2
    receipt = send(overlapping, sender=expirer)
    assert balances(token, holders) == [7, 6, 5, 4]
    assert [args["id"] for args in event_args(token, "Expired", receipt)] == expiry_ids[2:]
    assert all(token.functions.burned(id_).call() for id_ in expiry_ids)

    retry = send(overlapping, sender=expirer)
    assert retry["logs"] == []
    assert token.functions.totalSupply().call() == 22


def test_expire_batch_reverts_as_a_whole_on_a_bad_entry(
    token: Contract, issuer: ChecksumAddress, expirer: ChecksumAddress
) -> None:
    holders = new_holders(2)
    issue(token, issuer=issuer, ids=issuance_ids("award 1", 2), to=holders, amounts=[10, 10])
    expiry_ids = issuance_ids("expiry run 1", 2)
    expire_batch = token.functions.expireBatch

    with reverts_with(token, "ERC20InsufficientBalance", holders[1], 10, 11):
        expire_batch(expiry_ids, holders, [10, 11], REASON).transact({"from": expirer})
    send_expecting_revert(expire_batch(expiry_ids, holders, [10, 11], REASON), sender=expirer)
    with reverts_with(token, "LoyaltyTokenZeroAmount", expiry_ids[1]):
        expire_batch(expiry_ids, holders, [10, 0], REASON).transact({"from": expirer})
    with reverts_with(token, "LoyaltyTokenZeroAddress", expiry_ids[0]):
        expire_batch(expiry_ids, [ZERO_ADDRESS, holders[1]], [1, 1], REASON).transact(
            {"from": expirer}
        )
    with reverts_with(token, "LoyaltyTokenLengthMismatch"):
        expire_batch(expiry_ids, holders[:1], [1, 1], REASON).transact({"from": expirer})
    with reverts_with(token, "LoyaltyTokenLengthMismatch"):
        expire_batch(expiry_ids, holders, [1], REASON).transact({"from": expirer})

    assert balances(token, holders) == [10, 10]
    assert not any(token.functions.burned(id_).call() for id_ in expiry_ids)


@pytest.fixture
def award_token(token: Contract, admin: ChecksumAddress, issuer: ChecksumAddress) -> Contract:
    """`token` as in service: it has issued points before (so the total supply slot exists)."""
    earlier_holder = Web3.to_checksum_address(hashlib.sha256(b"earlier holder").digest()[:20])
    issue(token, issuer=issuer, ids=issuance_ids("earlier", 1), to=[earlier_holder], amounts=[1])
    return token


def start_campaign(token: Contract, *, admin: ChecksumAddress, name: str) -> bytes:
    """A new campaign id with a budget large enough for any award in this module."""
    campaign = hashlib.sha256(f"campaign: {name}".encode()).digest()
    send(token.functions.setCampaignBudget(campaign, 10**9), sender=admin)
    return campaign


def award_batch(
    token: Contract, *, issuer: ChecksumAddress, campaign: bytes, award: str, start: int, count: int
) -> TxReceipt:
    """Issue recipients `start` .. `start + count - 1` of `award`, each a new holder, under the
    per-transaction gas cap; return the receipt, whatever its status."""
    call = token.functions.issueBatch(
        campaign,
        issuance_ids(award, count, start=start),
        new_holders(count, start=start),
        [10 + index % 90 for index in range(start, start + count)],
    )
    tx_hash = call.transact({"from": issuer, "gas": TRANSACTION_GAS_CAP})
    return token.w3.eth.wait_for_transaction_receipt(tx_hash)


def test_gas_per_new_holder_in_a_batch_of_500(
    award_token: Contract, admin: ChecksumAddress, issuer: ChecksumAddress
) -> None:
    campaign = start_campaign(award_token, admin=admin, name="500")
    receipt = award_batch(
        award_token, issuer=issuer, campaign=campaign, award="500", start=0, count=500
    )

    assert receipt["status"] == 1
    gas_per_holder = receipt["gasUsed"] / 500
    assert gas_per_holder <= NEW_HOLDER_GAS_TARGET, f"{gas_per_holder:.0f} gas per new holder"


def test_largest_batch_fits_the_transaction_gas_cap(
    award_token: Contract, admin: ChecksumAddress, issuer: ChecksumAddress
) -> None:
    fits = award_batch(
        award_token,
        issuer=issuer,
        campaign=start_campaign(award_token, admin=admin, name="largest"),
        award="largest",
        start=0,
        count=LARGEST_BATCH,
    )
    too_large = award_batch(
        award_token,
        issuer=issuer,
        campaign=start_campaign(award_token, admin=admin, name="too large"),
        award="too large",
        start=LARGEST_BATCH,
        count=LARGEST_BATCH + 1,
    )

    assert fits["status"] == 1, "LARGEST_BATCH no longer fits: lower it"
    assert too_large["status"] == 0, "LARGEST_BATCH + 1 fits too: raise LARGEST_BATCH"
    assert too_large["gasUsed"] == TRANSACTION_GAS_CAP
    gas_per_holder = fits["gasUsed"] / LARGEST_BATCH
    assert gas_per_holder <= NEW_HOLDER_GAS_TARGET, f"{gas_per_holder:.0f} gas per new holder"


def test_award_of_10000_new_holders_meets_the_gas_target(
    award_token: Contract, admin: ChecksumAddress, issuer: ChecksumAddress
) -> None:
    campaign = start_campaign(award_token, admin=admin, name="10k")
    transactions = math.ceil(AWARD_SIZE / LARGEST_BATCH)
    bounds = [AWARD_SIZE * i // transactions for i in range(transactions + 1)]

    gas_used = 0
    for start, end in itertools.pairwise(bounds):
        receipt = award_batch(
            award_token,
            issuer=issuer,
            campaign=campaign,
            award="10k",
            start=start,
            count=end - start,
        )
        assert receipt["status"] == 1, f"recipients {start}..{end - 1} did not fit"
        gas_used += receipt["gasUsed"]

    gas_per_holder = gas_used / AWARD_SIZE
    assert gas_per_holder <= NEW_HOLDER_GAS_TARGET, (
        f"{gas_per_holder:.0f} gas per new holder in {transactions} transactions"
    )
    expected_points = sum(10 + index % 90 for index in range(AWARD_SIZE))
    assert award_token.functions.campaignIssued(campaign).call() == expected_points
    last_holder = new_holders(1, start=AWARD_SIZE - 1)
    assert balances(award_token, last_holder) == [10 + (AWARD_SIZE - 1) % 90]
