"""The offline verifier: bundles verify, and fail when any byte of content, proof, root or key
changes; malformed bundles are refused with a message naming the line and field."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crm_ledger.audit.export import open_export
from crm_ledger.cli import app
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.errors import FormatError
from crm_ledger.journal.privacy import KeyRing, attach_keyring
from crm_ledger.verifier.bundle import Scope
from crm_ledger.verifier.check import BundleCheck, check_bundle_offline, check_bundle_on_chain
from tests.anchoring.fakes import FakeChain
from tests.audit.fakes import FakeAuditChain, build_ledger

HEX = "0123456789abcdef"


def verify(lines: list[bytes], chain: FakeChain) -> BundleCheck:
    check, batches = check_bundle_offline(lines)
    asyncio.run(
        check_bundle_on_chain(
            check, batches, chain_for=lambda _: FakeAuditChain(chain), contract=None
        )
    )
    return check


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[bytes]], FakeChain]:
    """Bundles of one small ledger (SQLite; the verifier never sees the database)."""
    directory = tmp_path_factory.mktemp("ledger")
    engine = make_engine(f"sqlite:///{directory / 'ledger.sqlite'}")
    attach_keyring(engine, KeyRing.generate())
    upgrade_database(engine)
    chain = FakeChain()
    asyncio.run(build_ledger(make_session_factory(engine), chain, directory))
    customer = json.loads(
        next(
            line
            for line in open_export(engine, scope=Scope("all"), include_keys=True).lines()
            if b'"type":"key"' in line
        )
    )["customer_id"]
    bundles = {
        name: list(open_export(engine, scope=scope, include_keys=True).lines())
        for name, scope in {
            "all": Scope("all"),
            "customer": Scope("customer", customer_id=customer),
            "range": Scope("range", from_seq=3, to_seq=9),
        }.items()
    }
    engine.dispose()
    return bundles, chain


@pytest.mark.parametrize("name", ["all", "customer", "range"])
def test_an_untouched_bundle_verifies(
    exported: tuple[dict[str, list[bytes]], FakeChain], name: str
) -> None:
    bundles, chain = exported
    check = verify(bundles[name], chain)
    assert check.ok, check.failures
    assert check.records == check.commitments_checked
    assert check.batches_on_chain == check.batches


def mutations(lines: list[bytes]) -> Iterator[tuple[str, list[bytes]]]:
    """Every bundle that differs from `lines` in one character of a content, an audit path, a
    root, a head, a leaf input or a key."""
    for number, line in enumerate(lines):
        obj = json.loads(line)
        for where, container, field in _fields(obj):
            value = container[field]
            for position in range(len(value)):
                if value.startswith("0x") and position < 2:
                    continue
                old = value[position]
                if field == "content":
                    new = "x" if old != "x" else "y"
                else:
                    new = HEX[(HEX.index(old.lower()) + 1) % 16]
                container[field] = value[:position] + new + value[position + 1 :]
                changed = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
                container[field] = value
                yield (
                    f"line {number + 1} {where}[{position}]",
                    [*lines[:number], changed + b"\n", *lines[number + 1 :]],
                )


def _fields(obj: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    kind = obj.get("type")
    if kind == "record":
        if obj["content"] is not None:
            yield "content", obj, "content"
        yield "leaf_input", obj, "leaf_input"
        for i in range(len(obj["audit_path"] or [])):
            yield f"audit_path[{i}]", obj["audit_path"], i
    elif kind == "batch":
        for field in ("root", "head", "previous_head"):
            yield f"batch.{field}", obj["batch"], field
    elif kind == "key":
        yield "key", obj, "key"


@pytest.mark.parametrize("name", ["customer", "all"])
def test_changing_any_byte_of_content_proof_root_or_key_fails(
    exported: tuple[dict[str, list[bytes]], FakeChain], name: str
) -> None:
    bundles, chain = exported
    tried = 0
    for what, lines in mutations(bundles[name]):
        tried += 1
        try:
            check = verify(lines, chain)
        except FormatError:
            continue
        assert not check.ok, f"{what} changed and the bundle still verifies"
    assert tried > 1000


def test_a_bundle_whose_chain_was_rolled_back_fails(
    exported: tuple[dict[str, list[bytes]], FakeChain],
) -> None:
    bundles, chain = exported
    rolled_back = FakeChain(events=chain.events[:2], block_hashes=chain.block_hashes[:3])
    check = verify(bundles["all"], rolled_back)
    assert not check.ok
    assert any("batch 2: root_on_chain" in failure for failure in check.failures)


def test_dropping_or_reordering_records_fails(
    exported: tuple[dict[str, list[bytes]], FakeChain],
) -> None:
    bundles, chain = exported
    lines = bundles["all"]
    first_record = next(i for i, line in enumerate(lines) if b'"type":"record"' in line)
    dropped = [*lines[: first_record + 2], *lines[first_record + 3 :]]
    check = verify(dropped, chain)
    assert not check.ok
    assert any("lacks its records seq 2" in failure for failure in check.failures)
    swapped = list(lines)
    swapped[first_record : first_record + 2] = [lines[first_record + 1], lines[first_record]]
    with pytest.raises(FormatError, match="increasing seq order"):
        check_bundle_offline(swapped)


def edit(lines: list[bytes], index: int, change: Any) -> list[bytes]:
    obj = json.loads(lines[index])
    change(obj)
    return [*lines[:index], json.dumps(obj).encode() + b"\n", *lines[index + 1 :]]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda lines: [], "the bundle is empty"),
        (lambda lines: [b"not json\n", *lines[1:]], "line 1 is not JSON"),
        (lambda lines: [b"[1, 2]\n"], "line 1 must be a JSON object"),
        (
            lambda lines: edit(lines, 0, lambda o: o.update(format="crm-ledger/bundle/v2")),
            "unknown bundle format 'crm-ledger/bundle/v2'",
        ),
        (lambda lines: edit(lines, 0, lambda o: o.pop("format")), "not a crm-ledger bundle"),
        (lambda lines: edit(lines, 0, lambda o: o.pop("counts")), "header.counts is missing"),
        (
            lambda lines: edit(lines, 0, lambda o: o["scope"].update(kind="some")),
            "header.scope.kind must be",
        ),
        (lambda lines: [*lines[:-1], lines[-1][:40]], "is not JSON (is the file truncated"),
        (lambda lines: edit(lines, -1, lambda o: o.update(seq="5")), "seq must be an integer"),
        (
            lambda lines: edit(lines, -1, lambda o: o.update(leaf_input="0x0102")),
            "leaf_input must be 74 bytes of 0x-hex, got 2",
        ),
        (
            lambda lines: edit(lines, -1, lambda o: o.update(audit_path=["0x00"] * 33)),
            "audit_path must be null or an array of at most 32",
        ),
        (lambda lines: edit(lines, -1, lambda o: o.update(type="recrod")), "type must be"),
        (lambda lines: edit(lines, -1, lambda o: o.update(extra=1)), "unknown field 'extra'"),
        (lambda lines: edit(lines, -1, lambda o: o.update(content=7)), "content must be"),
        (
            lambda lines: edit(lines, 1, lambda o: o["batch"].update(root="0x12")),
            "line 2.batch.root must be 32 bytes of 0x-hex, got 1",
        ),
        (lambda lines: [*lines, lines[1]], "batch lines come before"),
        (lambda lines: [*lines[:-1], b"\n"], "line"),
    ],
)
def test_malformed_bundles_are_refused_naming_what_is_wrong(
    exported: tuple[dict[str, list[bytes]], FakeChain], make: Any, message: str
) -> None:
    bundles, _ = exported
    with pytest.raises(FormatError, match=None) as raised:
        check_bundle_offline(make(list(bundles["customer"])))
    assert message in str(raised.value)


def test_a_bundle_cut_at_a_line_boundary_fails_its_counts(
    exported: tuple[dict[str, list[bytes]], FakeChain],
) -> None:
    bundles, chain = exported
    check = verify(bundles["all"][:-1], chain)
    assert not check.ok
    assert any("truncated or spliced" in failure for failure in check.failures)


def test_the_verify_command_exit_codes(
    exported: tuple[dict[str, list[bytes]], FakeChain], tmp_path: Path
) -> None:
    bundles, _ = exported
    runner = CliRunner()
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"".join(bundles["all"]))
    result = runner.invoke(app, ["verify", str(good), "--offline"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output

    forged = tmp_path / "forged.jsonl"
    lines = edit(bundles["all"], 1, lambda o: o["batch"].update(root="0x" + "00" * 32))
    forged.write_bytes(b"".join(lines))
    result = runner.invoke(app, ["verify", str(forged), "--offline", "--json"])
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert answer["bundle"]["ok"] is False
    assert answer["bundle"]["failures"]

    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"".join(bundles["all"])[:-30])
    result = runner.invoke(app, ["verify", str(broken), "--offline"])
    assert result.exit_code == 2
    assert "is not JSON" in result.output
    assert "Traceback" not in result.output

    assert runner.invoke(app, ["verify", str(good)]).exit_code == 2  # no --rpc
    absent = str(tmp_path / "absent.jsonl")
    assert runner.invoke(app, ["verify", absent, "--offline"]).exit_code == 2
    digest = tmp_path / "digest.json"
    for text in ("{", '{"format": "crm-ledger/digest/v9", "batch": {}, "chain": {}}', "[]"):
        digest.write_text(text)
        result = runner.invoke(app, ["verify", "--since", str(digest), "--rpc", "http://x"])
        assert result.exit_code == 2, result.output
        assert "is not a usable digest" in result.output
