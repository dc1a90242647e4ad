"""Page cursors (`crm_ledger.cursors`): what is packed comes back; nothing else does."""

from __future__ import annotations

import base64

import pytest

from crm_ledger import cursors


@pytest.mark.parametrize("position", [0, 7, 2**63 - 1])
def test_a_position_comes_back(position: int) -> None:
    cursor = cursors.pack_position(position, "f1.")
    assert "=" not in cursor
    assert cursors.unpack_position(cursor, prefix="f1.", maximum=2**63 - 1, max_length=40) == (
        position
    )


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        _b64("f1.7"),  # padded: not what pack wrote
        cursors.pack("f1.007"),  # leading zeros
        cursors.pack("f1.-7"),
        cursors.pack("f2.7"),  # another kind's prefix
        cursors.pack("f1." + str(2**63)),  # over the maximum
        cursors.pack("f1.7") + "!",
        "é" * 4,
        cursors.pack("f1." + "1" * 60),  # over the length limit
    ],
)
def test_anything_else_is_refused(cursor: str) -> None:
    assert cursors.unpack_position(cursor, prefix="f1.", maximum=2**63 - 1, max_length=40) is None


def test_a_document_comes_back_and_an_edited_one_does_not() -> None:
    cursor = cursors.pack_document({"pk": 5, "at": "2026-12-07T00:00:00Z"})
    assert cursors.unpack_document(cursor, max_length=512) == {
        "pk": 5,
        "at": "2026-12-07T00:00:00Z",
    }
    spaced = cursors.pack('{"at": "2026-12-07T00:00:00Z", "pk": 5}')  # same JSON, not canonical
    assert cursors.unpack_document(spaced, max_length=512) is None
    assert cursors.unpack_document(cursors.pack("[1,2]"), max_length=512) is None
    assert cursors.unpack_document(cursors.pack("{nope"), max_length=512) is None
