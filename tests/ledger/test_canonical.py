"""Canonical content (RFC 8785) and commitments, driven by tests/vectors/commitment.json.

Each canonical form is re-derived by a second serialiser written here (object keys sorted by
UTF-16 code units, as RFC 8785 §3.2.3 requires, strings escaped by the json module), and each
commitment by HMAC-SHA256 built from RFC 2104 by hand, itself checked against RFC 4231.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_ledger.errors import FormatError
from crm_ledger.ledger.canonical import (
    CUSTOMER_KEY_SIZE,
    canonical_json,
    commitment,
    new_customer_key,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "commitment.json").read_text(encoding="utf-8")
)


def jcs_without_numbers_beyond_integers(value: Any) -> str:
    """RFC 8785 for the float-free JSON subset the ledger allows."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: key.encode("utf-16-be"))
        members = (
            json.dumps(key, ensure_ascii=False)
            + ":"
            + jcs_without_numbers_beyond_integers(value[key])
            for key in keys
        )
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(jcs_without_numbers_beyond_integers(item) for item in value) + "]"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"not in the ledger's JSON subset: {value!r}")


def hmac_sha256_by_hand(key: bytes, message: bytes) -> bytes:
    """RFC 2104 with SHA-256 (64-byte blocks)."""
    block = 64
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\x00")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key) + message).digest()
    return hashlib.sha256(bytes(b ^ 0x5C for b in key) + inner).digest()


@pytest.mark.parametrize(
    ("key", "message", "mac"),
    [
        # RFC 4231 §4.2, test case 1
        (
            bytes([0x0B]) * 20,
            b"Hi There",
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        # RFC 4231 §4.3, test case 2
        (
            b"Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
    ],
)
def test_hand_made_hmac_matches_rfc_4231(key: bytes, message: bytes, mac: str) -> None:
    assert hmac_sha256_by_hand(key, message).hex() == mac


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["desc"])
def test_canonical_bytes_match_vector(case: dict[str, Any]) -> None:
    expected = bytes.fromhex(case["canonical"])
    assert canonical_json(case["content"]) == expected
    assert jcs_without_numbers_beyond_integers(case["content"]).encode("utf-8") == expected


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["desc"])
def test_commitment_matches_vector(case: dict[str, Any]) -> None:
    key, canonical = bytes.fromhex(case["key"]), bytes.fromhex(case["canonical"])
    assert commitment(key, canonical).hex() == case["commitment"]
    assert hmac_sha256_by_hand(key, canonical).hex() == case["commitment"]


def test_published_case_sorts_by_utf16_not_by_code_point() -> None:
    (case,) = [c for c in VECTORS["cases"] if c["desc"].startswith("published")]
    text = bytes.fromhex(case["canonical"]).decode("utf-8")
    # U+1F602 is the surrogate pair D83D DE02 in UTF-16, so it sorts before U+FB33.
    assert text.index("\U0001f602") < text.index("\ufb33")
    naive = json.dumps(case["content"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert naive.encode("utf-8") != bytes.fromhex(case["canonical"])


@pytest.mark.parametrize("case", VECTORS["bad"], ids=lambda c: c["desc"])
def test_content_that_cannot_be_committed(case: dict[str, Any]) -> None:
    with pytest.raises(FormatError, match=re.escape(case["error"])):
        canonical_json(case["content"])


@pytest.mark.parametrize("case", VECTORS["bad_keys"], ids=lambda c: c["desc"])
def test_commitment_refuses_a_key_of_the_wrong_size(case: dict[str, Any]) -> None:
    with pytest.raises(FormatError, match=re.escape(case["error"])):
        commitment(bytes.fromhex(case["key"]), b"{}")


@pytest.mark.parametrize(
    "content",
    [{"amount": 1.5}, [0.1], {"a": {"b": [1, {"c": 2.0}]}}, 3.0],
)
def test_floats_are_refused_wherever_they_are(content: Any) -> None:
    with pytest.raises(FormatError, match="is a float"):
        canonical_json(content)


def test_key_order_of_the_input_does_not_matter() -> None:
    one = {"v": 1, "body": {"b": "2", "a": "1"}, "id": "x"}
    other = {"id": "x", "body": {"a": "1", "b": "2"}, "v": 1}
    assert (
        canonical_json(one)
        == canonical_json(other)
        == (b'{"body":{"a":"1","b":"2"},"id":"x","v":1}')
    )


def test_content_the_json_model_cannot_hold_is_refused() -> None:
    with pytest.raises(FormatError, match="cannot be canonicalised"):
        canonical_json({"raw": b"bytes"})
    with pytest.raises(FormatError, match="cannot be canonicalised"):
        canonical_json({1: "integer key"})


def test_commitment_depends_on_key_and_every_byte() -> None:
    key = bytes(range(CUSTOMER_KEY_SIZE))
    content = canonical_json({"v": 1, "body": {"note": "hello"}})
    base = commitment(key, content)
    assert commitment(bytes(reversed(key)), content) != base
    assert commitment(key, content.replace(b"hello", b"hellp")) != base


def test_new_customer_keys_are_fresh_32_byte_keys() -> None:
    keys = {new_customer_key() for _ in range(16)}
    assert len(keys) == 16
    assert all(len(key) == CUSTOMER_KEY_SIZE == 32 for key in keys)


# Every JSON value the ledger allows (no floats), with the strings RFC 8785 treats specially:
# control characters, quotes and backslashes, characters beyond the BMP (their UTF-16 surrogates
# sort object keys differently from their code points) and lone surrogates (refused).
_KEY_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\x00", "\x1f", '"', "\\", "\ue000", "\uffff", "\U0001f600", "\ud800"]),
    ),
    max_size=6,
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**60), max_value=2**60) | _KEY_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_KEY_TEXT, children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=3000, deadline=None)
@given(_JSON)
def test_canonical_json_is_the_rfc8785_package_byte_for_byte(value: Any) -> None:
    """The fast path (the json module's C encoder) never differs from the rfc8785 package:
    the same bytes, or the same refusal."""
    try:
        expected: bytes | None = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError, ValueError):
        expected = None
    if expected is None:
        with pytest.raises(FormatError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"\U0001f600": 1, "\ue000": 2, "a": 3},  # UTF-16 order puts the emoji first
        {"k": [1, {"z": "\x07", "y": "\u2028"}]},
        {"n": 2**53 - 1, "m": -(2**53) + 1},
        [True, False, None, ""],
    ],
)
def test_canonical_json_edge_cases_match_rfc8785(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", [{"n": 2**53}, {"s": "\ud800"}, {1: "x"}, {"f": [1, 0.5]}])
def test_canonical_json_refuses_what_rfc8785_refuses(value: Any) -> None:
    with pytest.raises(FormatError):
        canonical_json(value)
