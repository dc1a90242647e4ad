"""Fee schedule of anchor transactions: the first offer, and each replacement of a stuck one.

Exports: `first_fees`, `replacement_fees`, `gwei_to_wei`.

A transaction that is not mined is replaced under the same nonce, never re-sent under a new one
(that one would revert once the first is mined). Nodes accept a replacement only if it raises
both EIP-1559 fee caps by a minimum step (geth: 10 %); each replacement raises both by
`anchor_fee_bump_percent` (at least 12.5 %, one block's maximum base-fee rise) and never offers
less than the market does now. No offer exceeds `anchor_max_fee_per_gas_gwei`: past it,
`AnchorFeeCapReached` says what was needed, and the anchorer keeps waiting.
"""

from __future__ import annotations

import math
from fractions import Fraction

from crm_ledger.chain.contract import Fees
from crm_ledger.errors import AnchorFeeCapReached

WEI_PER_GWEI = 10**9


def gwei_to_wei(gwei: float) -> int:
    """`gwei` (a setting, possibly fractional) in wei."""
    return int(Fraction(str(gwei)) * WEI_PER_GWEI)


def _raised(value: int, bump_percent: float) -> int:
    """`value` raised by `bump_percent`, rounded up, and by at least 1 wei."""
    raised = math.ceil(value * (1 + Fraction(str(bump_percent)) / 100))
    return max(raised, value + 1)


def first_fees(market: Fees, *, cap_wei: int) -> Fees:
    """What a new anchor transaction offers: the market's fees, if within the cap."""
    if market.max_fee_per_gas > cap_wei:
        raise AnchorFeeCapReached(
            f"the chain asks {_gwei(market.max_fee_per_gas)} gwei per gas, above the cap of "
            f"{_gwei(cap_wei)} gwei (CRM_LEDGER_ANCHOR_MAX_FEE_PER_GAS_GWEI): anchoring waits "
            "for fees to fall or the cap to be raised; records stay queued, nothing is lost",
            needed_wei=market.max_fee_per_gas,
            cap_wei=cap_wei,
        )
    return market


def replacement_fees(
    previous: Fees, market: Fees, *, bump_percent: float, cap_wei: int, tx_label: str
) -> Fees:
    """The fees of a replacement for a transaction sent with `previous`.

    Both caps rise by `bump_percent` over `previous` (so nodes accept the replacement) and are
    never below `market`; the priority fee never exceeds the max fee. Raises
    `AnchorFeeCapReached` when the max fee would exceed `cap_wei`; `tx_label` names the stuck
    transaction in that message.
    """
    priority = max(
        _raised(previous.max_priority_fee_per_gas, bump_percent), market.max_priority_fee_per_gas
    )
    max_fee = max(_raised(previous.max_fee_per_gas, bump_percent), market.max_fee_per_gas, priority)
    if max_fee > cap_wei:
        raise AnchorFeeCapReached(
            f"{tx_label} is not mined at {_gwei(previous.max_fee_per_gas)} gwei per gas and a "
            f"replacement would need {_gwei(max_fee)} gwei, above the cap of {_gwei(cap_wei)} gwei "
            "(CRM_LEDGER_ANCHOR_MAX_FEE_PER_GAS_GWEI): anchoring keeps waiting for it to be "
            "mined or for the cap to be raised; records stay queued, nothing is lost",
            needed_wei=max_fee,
            cap_wei=cap_wei,
        )
    return Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=priority)


def _gwei(wei: int) -> str:
    return f"{wei / WEI_PER_GWEI:.9g}"
