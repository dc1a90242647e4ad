"""The browser verifier (static/verifier.js, run in Node) and the Python verifier agree on
every test vector in tests/vectors, good and bad, and on receipts altered field by field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from crm_ledger.chain.artifacts import load_artifact
from crm_ledger.errors import FormatError
from crm_ledger.ledger import merkle
from crm_ledger.ledger.canonical import commitment
from crm_ledger.ledger.leaf import LeafInput
from crm_ledger.ledger.receipts import Receipt, check_receipt
from crm_ledger.verifier.check import check_bundle_offline
from tests.console.conftest import RunJs

VECTORS = Path(__file__).parents[1] / "vectors"


def vectors(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def test_inclusion_vectors_good_and_bad(js: RunJs) -> None:
    cases = vectors("inclusion.json")["cases"]
    results = js(
        [
            {
                "op": "inclusion",
                "index": c["leaf_index"],
                "size": c["tree_size"],
                "leaf": c["leaf_hash"],
                "proof": c["proof"],
                "root": c["root"],
            }
            for c in cases
        ]
    )
    assert sum(not c["valid"] for c in cases) > 60
    for case, result in zip(cases, results, strict=True):
        python = merkle.verify_inclusion(
            index=case["leaf_index"],
            tree_size=case["tree_size"],
            leaf=bytes.fromhex(case["leaf_hash"]),
            proof=[bytes.fromhex(p) for p in case["proof"]],
            expected_root=bytes.fromhex(case["root"]),
        )
        assert result["valid"] is case["valid"] is python, case["desc"]


def test_leaf_input_vectors_decode_or_are_refused(js: RunJs) -> None:
    data = vectors("leaf_input.json")
    good = data["cases"]
    bad = data["bad_encoded"]
    results = js([{"op": "leaf_input", "encoded": c["encoded"]} for c in good + bad])
    for case, result in zip(good, results[: len(good)], strict=True):
        assert result == {
            "ok": True,
            "seq": str(case["seq"]),
            "kind": {1: "interaction", 2: "order", 3: "erasure", 4: "access"}[case["kind"]],
            "leaf_hash": "0x" + case["leaf_hash"],
        }, case["desc"]
    for case, result in zip(bad, results[len(good) :], strict=True):
        with pytest.raises(FormatError):
            LeafInput.decode(bytes.fromhex(case["encoded"]))
        assert result["ok"] is False, case["desc"]


def test_merkle_root_and_leaf_hash_vectors(js: RunJs) -> None:
    data = vectors("merkle_roots.json")
    leaf_hashes = [merkle.leaf_hash(bytes.fromhex(leaf)) for leaf in data["leaves"]]
    cases: list[dict[str, Any]] = [
        {"op": "leaf_hash", "leaf": c["leaf"]} for c in data["leaf_hashes"]
    ]
    cases += [
        {"op": "root", "leaf_hashes": [h.hex() for h in leaf_hashes[: c["size"]]]}
        for c in data["roots"]
    ]
    results = js(cases)
    for case, result in zip(data["leaf_hashes"], results[: len(data["leaf_hashes"])], strict=True):
        assert result["hash"] == "0x" + case["hash"], case["desc"]
    for case, result in zip(data["roots"], results[len(data["leaf_hashes"]) :], strict=True):
        assert result["root"] == "0x" + case["root"], case["desc"]
        assert merkle.root(leaf_hashes[: case["size"]]).hex() == case["root"]


def test_head_vectors_including_the_widest_fields(js: RunJs) -> None:
    data = vectors("head.json")
    cases = data["chain"] + data["cases"]
    # Node parses JSON numbers as doubles: the 64-bit first_seq goes as decimal text.
    results = js(
        [
            {
                "op": "head",
                "previous_head": c["previous_head"],
                "root": c["root"],
                "first_seq": str(c["first_seq"]),
                "count": c["count"],
            }
            for c in cases
        ]
    )
    for case, result in zip(cases, results, strict=True):
        assert result["head"] == "0x" + case["head"], case["desc"]


def test_commitment_vectors_and_bad_keys(js: RunJs) -> None:
    data = vectors("commitment.json")
    good = data["cases"]
    bad = data["bad_keys"]
    results = js(
        [{"op": "commitment", "key": c["key"], "canonical": c["canonical"]} for c in good]
        + [{"op": "commitment", "key": c["key"], "canonical": "7b7d"} for c in bad]
    )
    for case, result in zip(good, results[: len(good)], strict=True):
        assert result == {"ok": True, "commitment": "0x" + case["commitment"]}, case["desc"]
    for case, result in zip(bad, results[len(good) :], strict=True):
        with pytest.raises(FormatError):
            commitment(bytes.fromhex(case["key"]), b"{}")
        assert result == {"ok": False, "error": case["error"]}, case["desc"]


def _flip(value: str) -> str:
    """The 0x-hex `value` with its last digit changed."""
    return value[:-1] + ("0" if value[-1] != "0" else "1")


# Each alteration of a good receipt, named; the Python verifier's verdict is the oracle.
ALTERATIONS: dict[str, Any] = {
    "unaltered": lambda r: None,
    "leaf input byte": lambda r: r.update(leaf_input=_flip(r["leaf_input"])),
    "leaf input seq": lambda r: r.update(
        leaf_input=r["leaf_input"][:17] + "9" + r["leaf_input"][18:]
    ),
    "leaf input kind 7": lambda r: r.update(
        leaf_input=r["leaf_input"][:20] + "07" + r["leaf_input"][22:]
    ),
    "leaf hash": lambda r: r.update(leaf_hash=_flip(r["leaf_hash"])),
    "audit path element": lambda r: r["audit_path"].__setitem__(0, _flip(r["audit_path"][0])),
    "audit path truncated": lambda r: r["audit_path"].pop(),
    "audit path extended": lambda r: r["audit_path"].append(r["batch"]["root"]),
    "audit path swapped": lambda r: r["audit_path"].reverse(),
    "leaf index": lambda r: r.update(leaf_index=(r["leaf_index"] + 1) % r["tree_size"]),
    "tree size": lambda r: r.update(tree_size=r["tree_size"] + 1),
    "seq": lambda r: r.update(seq=r["seq"] + 1),
    "batch root": lambda r: r["batch"].update(root=_flip(r["batch"]["root"])),
    "batch head": lambda r: r["batch"].update(head=_flip(r["batch"]["head"])),
    "previous head": lambda r: r["batch"].update(previous_head=_flip(r["batch"]["previous_head"])),
    "batch first seq": lambda r: r["batch"].update(first_seq=r["batch"]["first_seq"] + 1),
    "batch count": lambda r: r["batch"].update(count=r["batch"]["count"] + 1),
    "wrong format": lambda r: r.update(format="crm-ledger/receipt/v2"),
    "missing field": lambda r: r.pop("leaf_hash"),
    "unknown field": lambda r: r.update(note="x"),
    "short hash": lambda r: r.update(leaf_hash=r["leaf_hash"][:-2]),
    "not hex": lambda r: r.update(leaf_hash="0x" + "zz" * 32),
    "no 0x": lambda r: r.update(leaf_hash=r["leaf_hash"][2:] + "00"),
    "negative index": lambda r: r.update(leaf_index=-1),
    "string seq": lambda r: r.update(seq=str(r["seq"])),
    "seq past 64 bits": lambda r: r.update(seq=2**64),
    "path of 33": lambda r: r.update(audit_path=[r["batch"]["root"]] * 33),
    "bad tx hash": lambda r: r["chain"].update(tx_hash="0x12"),
}


def python_verdict(receipt: dict[str, Any]) -> dict[str, Any]:
    try:
        parsed = Receipt.from_json(receipt)
    except FormatError:
        return {"format": False}
    return {"format": True, **{step.name: step.ok for step in check_receipt(parsed)}}


def js_verdict(result: dict[str, Any]) -> dict[str, Any]:
    return {
        step["name"]: step["status"] == "ok" for step in result["steps"] if step["name"] != "chain"
    }


def test_receipts_and_every_alteration_get_the_python_verdicts_step_by_step(js: RunJs) -> None:
    originals = [record["receipt"] for record in vectors("receipts.json")["records"]]
    altered = []
    for original in originals:
        for name, alter in ALTERATIONS.items():
            receipt = copy.deepcopy(original)
            alter(receipt)
            altered.append((f"seq {original['seq']}: {name}", receipt))
    results = js([{"op": "receipt", "receipt": receipt} for _, receipt in altered])
    for (name, receipt), result in zip(altered, results, strict=True):
        expected = python_verdict(receipt)
        assert js_verdict(result) == expected, name
        assert result["ok"] is all(expected.values()), name
    passed = sorted(
        name for (name, _), result in zip(altered, results, strict=True) if result["ok"]
    )
    # Reversing a one-hash audit path changes nothing; every other alteration is caught.
    assert passed == sorted(
        [f"seq {r['seq']}: unaltered" for r in originals]
        + [f"seq {r['seq']}: audit path swapped" for r in originals if len(r["audit_path"]) < 2]
    )


def test_the_hard_coded_selector_and_event_topic_match_the_compiled_abi(js: RunJs) -> None:
    abi = load_artifact("AuditLedger").abi
    [batch] = [i for i in abi if i.get("type") == "function" and i["name"] == "batch"]
    [event] = [i for i in abi if i.get("type") == "event" and i["name"] == "BatchAnchored"]

    def signature(item: dict[str, Any]) -> str:
        return f"{item['name']}({','.join(arg['type'] for arg in item['inputs'])})"

    [constants] = js([{"op": "constants"}])
    assert constants == {
        "batch_selector": "0x" + Web3.keccak(text=signature(batch)).hex()[:8].removeprefix("0x"),
        "batch_anchored_topic": "0x" + Web3.keccak(text=signature(event)).hex().removeprefix("0x"),
    }


def vector_bundle(*, complete: bool) -> list[dict[str, Any]]:
    """The worked example (tests/vectors/receipts.json) as a bundle's lines, keys included."""
    records = vectors("receipts.json")["records"]
    first = records[0]["receipt"]
    lines: list[dict[str, Any]] = [
        {
            "format": "crm-ledger/bundle/v1",
            "created_at": "2025-03-01T10:00:00Z",
            # A bundle of the whole ledger holds whole batches; one with audit paths is a range.
            "scope": {"kind": "all"} if complete else {"kind": "range", "from_seq": 0, "to_seq": 2},
            "includes_keys": True,
            "counts": {"batches": 1, "keys": 2, "records": len(records)},
        },
        {"type": "batch", "batch": first["batch"], "chain": first["chain"], "complete": complete},
    ]
    keys = {r["content"]["customer_id"]: r["key"] for r in records}
    lines += [{"type": "key", "customer_id": c, "key": "0x" + k} for c, k in keys.items()]
    for record in records:
        receipt = record["receipt"]
        lines.append(
            {
                "type": "record",
                "seq": receipt["seq"],
                "record_id": receipt["record_id"],
                "customer_id": record["content"]["customer_id"],
                "content": bytes.fromhex(record["content_canonical"]).decode(),
                "leaf_input": receipt["leaf_input"],
                "audit_path": None if complete else receipt["audit_path"],
            }
        )
    return lines


def _last_record(lines: list[dict[str, Any]]) -> dict[str, Any]:
    return lines[-1]


BUNDLE_ALTERATIONS: dict[str, Any] = {
    "unaltered": lambda lines: None,
    "content": lambda lines: _last_record(lines).update(
        content=_last_record(lines)["content"].replace('"qty":2', '"qty":3')
    ),
    "key": lambda lines: lines[2].update(key=_flip(lines[2]["key"])),
    "leaf input": lambda lines: _last_record(lines).update(
        leaf_input=_flip(_last_record(lines)["leaf_input"])
    ),
    "batch root": lambda lines: lines[1]["batch"].update(root=_flip(lines[1]["batch"]["root"])),
    "batch head": lambda lines: lines[1]["batch"].update(head=_flip(lines[1]["batch"]["head"])),
    "header count": lambda lines: lines[0]["counts"].update(records=2),
    "record dropped": lambda lines: (lines.pop(), lines[0]["counts"].update(records=2)),
    "customer chain broken": lambda lines: _last_record(lines).update(
        customer_id=lines[-2]["customer_id"]
    ),
}


@pytest.mark.parametrize("complete", [True, False], ids=["complete batch", "audit paths"])
def test_bundles_get_the_python_offline_verdicts(js: RunJs, complete: bool) -> None:
    cases = []
    for name, alter in BUNDLE_ALTERATIONS.items():
        lines = copy.deepcopy(vector_bundle(complete=complete))
        alter(lines)
        cases.append((name, "".join(json.dumps(line) + "\n" for line in lines)))
    if complete:
        lines = copy.deepcopy(vector_bundle(complete=True))
        lines[1]["complete"] = False
        cases.append(
            ("whole ledger, batch not complete", "".join(json.dumps(x) + "\n" for x in lines))
        )
    else:
        lines = copy.deepcopy(vector_bundle(complete=False))
        lines[-1]["audit_path"][0] = _flip(lines[-1]["audit_path"][0])
        cases.append(("audit path", "".join(json.dumps(line) + "\n" for line in lines)))
    results = js([{"op": "bundle", "text": text} for _, text in cases])
    for (name, text), result in zip(cases, results, strict=True):
        python, _ = check_bundle_offline(text.encode().splitlines())
        assert result["ok"] is python.ok is (name == "unaltered"), (name, result["steps"])
