"""The verifier module in Chromium itself (WebCrypto of the browser, not Node's) gets the
Python verifier's verdicts on the inclusion vectors and on every receipt alteration."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from crm_ledger.app import create_app
from crm_ledger.config import Settings
from crm_ledger.ledger import merkle
from tests.console.conftest import LiveService
from tests.console.test_verifier_vectors import ALTERATIONS, js_verdict, python_verdict, vectors

RUN_IN_PAGE = """async ({receipts, inclusion}) => {
  const v = await import('/console/verifier.js');
  const hex = (t) => v.hexToBytes('case', t, null, false);
  const verdicts = [];
  for (const r of receipts) verdicts.push(await v.verifyReceipt(r));
  const included = [];
  for (const c of inclusion) {
    try {
      const root = await v.rootFromInclusionProof(c.leaf_index, c.tree_size, hex(c.leaf_hash),
                                                  c.proof.map(hex));
      included.push(v.bytesToHex(root) === '0x' + c.root);
    } catch (error) {
      included.push(false);
    }
  }
  return {verdicts, included};
}"""


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[LiveService]:
    """The service without a chain, on a real port: enough to serve the console's files (no
    database is asked anything, so SQLite alone)."""
    app = create_app(
        Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'l.sqlite'}"),
        background=False,
    )
    with LiveService(app) as service:
        yield service
    app.state.runtime.engine.dispose()


def test_chromium_and_python_agree_on_vectors_and_altered_receipts(
    shell: LiveService, page: Page
) -> None:
    page.goto(shell.url + "/#/verify")
    receipts = []
    for record in vectors("receipts.json")["records"]:
        for alter in ALTERATIONS.values():
            receipt = copy.deepcopy(record["receipt"])
            alter(receipt)
            receipts.append(receipt)
    inclusion = vectors("inclusion.json")["cases"]
    found: dict[str, Any] = page.evaluate(
        RUN_IN_PAGE, {"receipts": receipts, "inclusion": inclusion}
    )
    for receipt, verdict in zip(receipts, found["verdicts"], strict=True):
        assert js_verdict(verdict) == python_verdict(receipt)
    for case, included in zip(inclusion, found["included"], strict=True):
        assert (
            included
            is case["valid"]
            is merkle.verify_inclusion(
                index=case["leaf_index"],
                tree_size=case["tree_size"],
                leaf=bytes.fromhex(case["leaf_hash"]),
                proof=[bytes.fromhex(p) for p in case["proof"]],
                expected_root=bytes.fromhex(case["root"]),
            )
        ), case["desc"]
