"""The leaf input: the fixed binary layout that each ledger leaf hashes (format version 1).

Exports: `RecordKind`, `LeafInput`, `FORMAT_VERSION`, `LEAF_INPUT_SIZE`.

    offset  size  field
    0       1     format version (0x01)
    1       8     seq, unsigned big-endian
    9       1     record kind (RecordKind)
    10      32    commitment = HMAC-SHA256(customer key, canonical content)
    42      32    leaf hash of the same customer's previous record (zeros for the first)
    74            total

The last field makes each customer's records a hash chain inside the ledger, so removing or
reordering one of them breaks the next one's leaf. docs/ledger-format.md is the full description.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from crm_ledger.errors import FormatError
from crm_ledger.ledger.merkle import ZERO_HASH, leaf_hash

FORMAT_VERSION = 1
LEAF_INPUT_SIZE = 74
MAX_SEQ = 2**64 - 1


class RecordKind(enum.IntEnum):
    """What a ledger record is; the byte at offset 9 of the leaf input."""

    INTERACTION = 1
    ORDER = 2
    ERASURE = 3
    #: A read of the customer's personal data (who, in which role, for what purpose).
    ACCESS = 4


@dataclass(frozen=True, slots=True)
class LeafInput:
    """One decoded leaf input."""

    seq: int
    kind: RecordKind
    commitment: bytes
    previous_leaf_hash: bytes = ZERO_HASH
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        """The 74 bytes that are hashed into the leaf."""
        if self.version != FORMAT_VERSION:
            raise FormatError(f"cannot encode leaf format version {self.version}")
        if not 0 <= self.seq <= MAX_SEQ:
            raise FormatError(f"seq {self.seq} does not fit in 64 bits")
        if len(self.commitment) != 32 or len(self.previous_leaf_hash) != 32:
            raise FormatError("commitment and previous leaf hash must be 32 bytes each")
        # Refuse what `decode` would refuse, so no encoded leaf is unreadable.
        try:
            kind = RecordKind(self.kind)
        except ValueError:
            raise FormatError(f"unknown record kind {self.kind!r}") from None
        return (
            bytes([self.version])
            + self.seq.to_bytes(8, "big")
            + bytes([kind])
            + self.commitment
            + self.previous_leaf_hash
        )

    def leaf_hash(self) -> bytes:
        """RFC 6962 leaf hash of the encoded input."""
        return leaf_hash(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> LeafInput:
        """Parse 74 bytes; raises `FormatError` saying what is wrong."""
        if len(data) != LEAF_INPUT_SIZE:
            raise FormatError(f"a leaf input is {LEAF_INPUT_SIZE} bytes, got {len(data)}")
        if data[0] != FORMAT_VERSION:
            raise FormatError(
                f"unknown leaf format version {data[0]}; this build reads version {FORMAT_VERSION}"
            )
        try:
            kind = RecordKind(data[9])
        except ValueError:
            raise FormatError(f"unknown record kind {data[9]} in leaf input") from None
        return cls(
            seq=int.from_bytes(data[1:9], "big"),
            kind=kind,
            commitment=bytes(data[10:42]),
            previous_leaf_hash=bytes(data[42:74]),
        )
