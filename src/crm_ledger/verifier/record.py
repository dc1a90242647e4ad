"""The record check: a receipt, the record's content and its key, against the chain.

Exports: `RecordCheck`, `verify_record`, `parse_content`, `parse_key`.

Runs every step of docs/ledger-format.md section 7, each reported even when an earlier one
failed: `leaf_input`, `leaf_hash`, `position`, `inclusion`, `head`, `commitment` and
`document` (when content and key are at hand), `network`, `root_on_chain`, `transaction`,
`block`. The verdict is `valid` when no step failed and the chain could be asked, `invalid`
when a step failed, `incomplete` when nothing failed but the chain could not be reached.
Imports no database code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from crm_ledger.errors import ChainUnavailable, FormatError
from crm_ledger.ledger.canonical import CUSTOMER_KEY_SIZE, canonical_json
from crm_ledger.ledger.hexcodec import unhex
from crm_ledger.ledger.leaf import LeafInput
from crm_ledger.ledger.receipts import Receipt, check_receipt
from crm_ledger.verifier.chain import AuditChain
from crm_ledger.verifier.onchain import CheckStep, StepStatus, check_anchoring, check_network

_CHAIN_STEPS = ("network", "root_on_chain", "transaction", "block")


@dataclass(frozen=True, slots=True)
class RecordCheck:
    """The verdict on one receipt and every step that led to it."""

    verdict: str
    steps: list[CheckStep]
    content_checked: bool

    def to_json(self) -> dict[str, Any]:
        """The answer of `POST /v1/audit/verify`."""
        return {
            "verdict": self.verdict,
            "content_checked": self.content_checked,
            "steps": [step.to_json() for step in self.steps],
        }


def parse_content(value: object) -> bytes | None:
    """The record's canonical bytes from a string (used as is) or a JSON object (RFC 8785).

    Raises `FormatError` naming `content` for anything else.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError("content is not valid Unicode (it holds a lone surrogate)") from None
    if isinstance(value, dict):
        return canonical_json(value)
    raise FormatError(
        "content must be the record's canonical JSON text (a string) or its document (an "
        f"object), got {type(value).__name__}"
    )


def parse_key(value: object, field: str = "customer_key") -> bytes | None:
    """A 32-byte key from 0x-hex; raises `FormatError` naming `field`."""
    if value is None:
        return None
    return unhex(field, value, CUSTOMER_KEY_SIZE)


async def verify_record(
    *,
    receipt: Receipt,
    content: bytes | None,
    key: bytes | None,
    chain: AuditChain | None,
    expected_contract: str | None,
    unchecked_content: str = "no content was given",
) -> RecordCheck:
    """Check `receipt` (and `content` under `key` when both are given) against `chain`.

    `chain` must be bound to the AuditLedger the auditor trusts; `expected_contract` is that
    address, compared with the one the receipt names. `unchecked_content` says why the
    commitment cannot be checked when content or key is missing (e.g. erased).
    """
    have_content = content is not None and key is not None
    steps = [
        CheckStep.of(step)
        for step in check_receipt(
            receipt,
            content=content if have_content else None,
            customer_key=key if have_content else None,
        )
    ]
    if have_content:
        assert content is not None
        steps.append(_document(receipt, content))
    else:
        steps.append(CheckStep("commitment", StepStatus.SKIPPED, unchecked_content))
    steps += await _chain_steps(receipt, chain, expected_contract)
    if any(step.status == StepStatus.FAILED for step in steps):
        verdict = "invalid"
    elif any(step.status == StepStatus.SKIPPED for step in steps if step.name in _CHAIN_STEPS):
        verdict = "incomplete"
    else:
        verdict = "valid"
    return RecordCheck(verdict=verdict, steps=steps, content_checked=have_content)


def _document(receipt: Receipt, content: bytes) -> CheckStep:
    try:
        document = json.loads(content)
        named = (document["v"], document["id"], document["kind"])
    except (ValueError, TypeError, KeyError):
        return CheckStep(
            "document", StepStatus.FAILED, "the content is not a ledger document (v, id, kind)"
        )
    try:
        kind = LeafInput.decode(receipt.leaf_input).kind.name.lower()
    except FormatError:
        kind = "?"
    expected = (1, receipt.record_id, kind)
    if named != expected:
        return CheckStep(
            "document",
            StepStatus.FAILED,
            f"the document is version {named[0]}, record {named[1]}, kind {named[2]}; the "
            f"receipt is for version 1, record {expected[1]}, kind {expected[2]}",
        )
    return CheckStep(
        "document", StepStatus.OK, f"the document is record {receipt.record_id}, kind {kind}"
    )


async def _chain_steps(
    receipt: Receipt, chain: AuditChain | None, expected_contract: str | None
) -> list[CheckStep]:
    if chain is None:
        return [
            CheckStep(name, StepStatus.SKIPPED, "no chain is configured to check against")
            for name in _CHAIN_STEPS
        ]
    try:
        network = await check_network(chain, receipt.chain, expected_contract=expected_contract)
        if network.status != StepStatus.OK:
            return [network] + [
                CheckStep(name, StepStatus.SKIPPED, "the receipt is for another chain or contract")
                for name in _CHAIN_STEPS[1:]
            ]
        return [network, *await check_anchoring(chain, receipt.batch, receipt.chain)]
    except ChainUnavailable as exc:
        return [
            CheckStep(name, StepStatus.SKIPPED, f"the chain could not be asked: {exc}")
            for name in _CHAIN_STEPS
        ]
