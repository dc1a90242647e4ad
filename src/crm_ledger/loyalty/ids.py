"""The opaque 32-byte values the chain sees: campaign ids, issuance ids, burn ids, refs, reasons.

Exports: `new_campaign_onchain_id`, `award_issuance_id`, `earning_issuance_id`,
`redemption_burn_id`, `reward_ref_code`, `expiry_reason_code`, `INDEX_BYTES`.

No personal data reaches the chain: every value here is random or a SHA-256 over service ids
(UUIDs) and sequence numbers. Issuance ids follow LoyaltyToken's cheap scheme, a 28-byte prefix
followed by a 4-byte big-endian index, so that ids issued together share the contract's storage
words of used-id flags:

- an award job's recipient `i` gets sha256("award" ‖ job id)[:28] ‖ i;
- earning for the record with sequence number `s` in a campaign gets
  sha256("earning" ‖ campaign id ‖ s >> 8)[:28] ‖ (s & 0xff), so the earnings of 256
  consecutive records share one word.

Ids are derived, never drawn, so a job or an earning planned again after a crash gets the same
id, and the contract's used-id bitmap refuses to mint it twice. An expiry burns under the lot's
own issuance id (burn ids are a separate space on chain), so lots issued together also expire
cheaply together.
"""

from __future__ import annotations

import hashlib
import secrets

INDEX_BYTES = 4
_PREFIX_BYTES = 32 - INDEX_BYTES
_MAX_INDEX = 2 ** (8 * INDEX_BYTES) - 1


def _digest(*parts: bytes) -> bytes:
    return hashlib.sha256(b"crm-ledger/loyalty/" + b"\x00".join(parts)).digest()


def new_campaign_onchain_id() -> bytes:
    """A fresh random campaign id for the chain (nothing about the campaign can be read off it)."""
    return secrets.token_bytes(32)


def award_issuance_id(job_id: str, index: int) -> bytes:
    """Issuance id of recipient `index` (0, 1, ...) of award job `job_id`."""
    if not 0 <= index <= _MAX_INDEX:
        raise ValueError(f"recipient index {index} does not fit in {INDEX_BYTES} bytes")
    prefix = _digest(b"award", job_id.encode())[:_PREFIX_BYTES]
    return prefix + index.to_bytes(INDEX_BYTES, "big")


def earning_issuance_id(campaign_id: str, seq: int) -> bytes:
    """Issuance id of what campaign `campaign_id` awards for the record with sequence `seq`."""
    if seq < 0:
        raise ValueError(f"sequence numbers are not negative, got {seq}")
    word = (seq >> 8).to_bytes(8, "big")
    prefix = _digest(b"earning", campaign_id.encode(), word)[:_PREFIX_BYTES]
    return prefix + (seq & 0xFF).to_bytes(INDEX_BYTES, "big")


def redemption_burn_id(redemption_id: str) -> bytes:
    """Burn id of redemption `redemption_id`: a retried redeem transaction burns once."""
    return _digest(b"redemption", redemption_id.encode())


def reward_ref_code(redemption_id: str, reward_ref: str) -> bytes:
    """The `ref` the chain records for a redemption: a digest, never the client's reference.

    The redemption id (random) is part of the input, so a low-entropy reference such as an
    order number cannot be confirmed by guessing.
    """
    return _digest(b"reward-ref", redemption_id.encode(), reward_ref.encode())


def expiry_reason_code(campaign_onchain_id: bytes) -> bytes:
    """The `reason` the chain records when lots of a campaign expire under its policy."""
    return _digest(b"expiry", campaign_onchain_id)
