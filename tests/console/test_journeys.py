"""End-to-end journeys in Chromium against the running service and Anvil, as a user walks them.

Each test runs on SQLite and on PostgreSQL. An accessibility check (axe-core) runs on every page
it visits; with CRM_LEDGER_CONSOLE_SCREENSHOTS=1 the SQLite run saves the screenshots
docs/console.md shows.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from crm_ledger.chain.node import LocalNode
from crm_ledger.journal.keys import Role
from crm_ledger.verifier.check import check_bundle_offline
from tests.api.helpers import interaction, order
from tests.console.conftest import SCREENSHOTS, LiveService, axe_violations
from tests.waiting import wait_for

pytestmark = pytest.mark.chain

BATCH_SELECTOR = "0x0eaa75fe"
OTHER_ROOT = "ab" * 32


class RootSwappingNode:
    """A JSON-RPC proxy on 127.0.0.1 that forwards to a real node but answers every
    `batch(id)` call with another root: a chain that disagrees with the receipt."""

    def __init__(self, upstream: str) -> None:
        node = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _cors(self) -> None:
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Headers", "content-type")
                self.send_header("Access-Control-Allow-Methods", "POST")

            def do_OPTIONS(self) -> None:
                self.send_response(204)
                self._cors()
                self.end_headers()

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = httpx.post(upstream, json=request, timeout=10).json()
                params = request.get("params") or [{}]
                if request["method"] == "eth_call" and params[0].get("data", "").startswith(
                    BATCH_SELECTOR
                ):
                    answer["result"] = answer["result"][: -len(OTHER_ROOT)] + OTHER_ROOT
                    node.swapped += 1
                body = json.dumps(answer).encode()
                self.send_response(200)
                self._cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.swapped = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def lying_node(anvil: LocalNode) -> Iterator[RootSwappingNode]:
    proxy = RootSwappingNode(anvil.rpc_url)
    yield proxy
    proxy.close()


class Clients:
    """API clients of the live service, one key each; closed after the test."""

    def __init__(self, live: LiveService) -> None:
        self.live = live
        self.made: list[httpx.Client] = []

    def __call__(self, role: Role) -> httpx.Client:
        made = _client(self.live, role)
        self.made.append(made)
        return made


@pytest.fixture
def client_for(live: LiveService) -> Iterator[Clients]:
    clients = Clients(live)
    yield clients
    for made in clients.made:
        made.close()


def _client(live: LiveService, role: Role) -> httpx.Client:
    counter = iter(range(1_000_000))
    return httpx.Client(
        base_url=live.url,
        headers={"Authorization": f"Bearer {live.key(role)}"},
        event_hooks={
            "request": [
                lambda request: request.headers.setdefault(
                    "Idempotency-Key", f"console-test-{next(counter)}-{id(request)}"
                )
            ]
        },
        timeout=30,
    )


def seed_customer(api: httpx.Client, name: str) -> tuple[str, list[str]]:
    """A customer tagged vip with three interactions and an order, all anchored."""
    customer = api.post(
        "/v1/customers",
        json={"name": name, "email": f"{name.split()[0].lower()}@example.com", "tags": ["vip"]},
    )
    assert customer.status_code == 201, customer.text
    customer_id: str = customer.json()["id"]
    record_ids = []
    for topic in ("billing", "delivery", "returns"):
        made = api.post("/v1/interactions", json=interaction(customer_id, details={"topic": topic}))
        assert made.status_code == 201, made.text
        record_ids.append(made.json()["id"])
    sold = api.post("/v1/orders", json=order(customer_id))
    assert sold.status_code == 201, sold.text
    record_ids.append(sold.json()["id"])
    for record_id in record_ids:
        wait_for(lambda rid=record_id: api.get(f"/v1/records/{rid}/receipt").status_code == 200, 60)
    return customer_id, record_ids


class Visit:
    """Page helpers: sign in, check accessibility, keep a screenshot (SQLite run only)."""

    def __init__(self, page: Page, live: LiveService, screenshots: bool) -> None:
        self.page = page
        self.live = live
        self.screenshots = screenshots

    def sign_in(self, key: str) -> None:
        self.page.goto(self.live.url + "/#/signin")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()

    def check(self, name: str, part: str | None = None, *, screenshot: bool = True) -> None:
        """No serious or critical axe violation; a screenshot of the viewport, or of `part`."""
        assert axe_violations(self.page) == [], name
        if self.screenshots and screenshot:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            path = str(SCREENSHOTS / f"{name}.png")
            if part is None:
                self.page.screenshot(path=path, type="png")
            else:
                self.page.locator(part).screenshot(path=path, type="png")


@pytest.fixture
def visit(page: Page, live: LiveService) -> Visit:
    """Screenshots only when asked (CRM_LEDGER_CONSOLE_SCREENSHOTS=1), so a test run does not
    rewrite the committed PNGs; from the SQLite run."""
    database_url = live.app.state.runtime.settings.resolved_database_url
    wanted = os.environ.get("CRM_LEDGER_CONSOLE_SCREENSHOTS") == "1"
    return Visit(page, live, screenshots=wanted and database_url.startswith("sqlite"))


def test_sign_in_search_open_a_customer_and_verify_a_receipt_in_the_browser(
    visit: Visit, live: LiveService, lying_node: RootSwappingNode, client_for: Clients
) -> None:
    page = visit.page
    api = client_for(Role.ADMIN)
    seed_customer(api, "Grace Hopper")

    page.goto(live.url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    visit.check("sign-in")
    visit.sign_in("crml_not-a-key")
    expect(page.get_by_role("alert")).to_contain_text("401")
    assert page.evaluate("sessionStorage.length") == 0

    visit.sign_in(live.key(Role.AUDITOR))
    expect(page.locator("#who")).to_contain_text("auditor")
    nav = page.get_by_role("navigation", name="Pages")
    expect(nav.get_by_role("link", name="Audit")).to_be_visible()
    expect(nav.get_by_role("link", name="Marketing")).to_have_count(0)
    assert "crml_" not in page.url

    # Names are sealed at rest: the search matches an exact email, a reference or an id.
    page.get_by_label("Search").fill("grace@example.com")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#results tbody tr")).to_have_count(1)
    visit.check("customers")
    page.get_by_role("link", name="Grace Hopper").click()
    expect(page.get_by_role("heading", name="Grace Hopper")).to_be_visible()
    expect(page.locator("#timeline tbody tr")).to_have_count(4)
    expect(page.locator("#timeline .badge").first).to_have_text(re.compile("anchored|confirmed"))
    visit.check("customer")

    page.get_by_role("button", name="Audit now").click()
    expect(page.locator("#customer-audit")).to_contain_text("Verdict: ok")

    page.locator("#timeline").get_by_role("link", name="receipt").first.click()
    expect(page.get_by_role("heading", name="Receipt", exact=True)).to_be_visible()
    expect(page.get_by_label("JSON-RPC URL the browser reads the chain from")).to_have_value(
        live.app.state.runtime.settings.rpc_url
    )
    page.get_by_role("button", name="Verify in this browser").click()
    page.locator(".verdict").wait_for()
    assert page.locator(".verdict").text_content() == "✓ Verified in this browser", page.locator(
        "ol.steps"
    ).inner_text()
    steps = page.locator("ol.steps li")
    expect(steps).to_have_count(10)
    assert steps.evaluate_all("items => items.map(i => i.dataset.status)") == ["ok"] * 10
    visit.check("receipt-verified", screenshot=False)  # the ✗ one below shows the page

    # The test alters the receipt: its leaf hash no longer matches its leaf input.
    receipt = page.get_by_label("Receipt JSON: edit it to see the verifier catch the change")
    original = receipt.input_value()
    altered = json.loads(original)
    altered["leaf_hash"] = altered["leaf_hash"][:-1] + (
        "0" if altered["leaf_hash"][-1] != "0" else "1"
    )
    receipt.fill(json.dumps(altered))
    page.get_by_role("button", name="Verify in this browser").click()
    expect(page.locator(".verdict")).to_have_text("✗ Verification failed")
    expect(page.locator("li[data-step=leaf_hash]")).to_have_attribute("data-status", "failed")
    expect(page.locator("li[data-step=leaf_hash]")).to_contain_text(altered["leaf_hash"])

    # The chain answers with another root.
    receipt.fill(original)
    page.get_by_label("JSON-RPC URL the browser reads the chain from").fill(lying_node.url)
    page.get_by_role("button", name="Verify in this browser").click()
    expect(page.locator(".verdict")).to_have_text("✗ Verification failed")
    failed = page.locator("li[data-step=root_on_chain]")
    expect(failed).to_have_attribute("data-status", "failed")
    expect(failed).to_contain_text("0x" + OTHER_ROOT)
    expect(failed).to_contain_text(json.loads(original)["batch"]["root"])
    expect(page.locator("li[data-step=inclusion]")).to_have_attribute("data-status", "ok")
    assert lying_node.swapped == 1
    visit.check("receipt-wrong-root", part=".verifier")


def test_run_an_audit_save_the_digest_and_check_the_ledger_only_grew(
    visit: Visit, live: LiveService, client_for: Clients
) -> None:
    page = visit.page
    api = client_for(Role.ADMIN)
    seed_customer(api, "Alan Turing")
    visit.sign_in(live.key(Role.AUDITOR))
    expect(page.locator("#who")).to_contain_text("auditor")
    page.goto(live.url + "/#/audit")
    saved = page.locator("#digest")
    expect(saved).to_contain_text("crm-ledger/digest")
    digest_text = saved.text_content() or ""

    page.get_by_role("button", name="Audit the whole ledger now").click()
    expect(page.locator("#ledger-audit .badge")).to_have_text("clean", timeout=60_000)
    expect(page.locator("#ledger-audit")).to_contain_text(
        re.compile(r"[1-9][\d,]* records checked")
    )

    seed_customer(api, "Alonzo Church")  # the ledger grows
    page.get_by_label("A digest you saved earlier").fill(digest_text)
    page.get_by_role("button", name="Check that the ledger only grew").click()
    expect(page.locator("#grew")).to_contain_text("✓ The ledger only grew")
    # Alonzo's four records, and the access records of the reads of his personal data.
    expect(page.locator("#grew")).to_contain_text(re.compile(r"([4-9]|\d\d+) records added"))
    visit.check("audit")

    forged = json.loads(digest_text)
    forged["batch"]["head"] = "0x" + "11" * 32
    page.get_by_label("A digest you saved earlier").fill(json.dumps(forged))
    page.get_by_role("button", name="Check that the ledger only grew").click()
    expect(page.locator("#grew")).to_contain_text("✗ The ledger does not extend this digest")


def test_create_a_campaign_award_points_by_tag_and_csv_redeem_and_see_the_balance_change(
    visit: Visit, live: LiveService, client_for: Clients, tmp_path: Path
) -> None:
    page = visit.page
    customer_id, _ = seed_customer(client_for(Role.ADMIN), "Katherine Johnson")
    visit.sign_in(live.key(Role.MARKETING))
    expect(page.locator("#who")).to_contain_text("marketing")
    page.goto(live.url + f"/#/customer/{customer_id}")
    expect(page.locator("#chain-balance")).to_have_text("0")

    page.goto(live.url + "/#/marketing")
    page.get_by_label("Name").fill("Spring tea")
    page.get_by_label("Budget (points)").fill("1000")
    page.get_by_label("Points per unit of order total (optional)").fill("2")
    page.get_by_role("button", name="Create campaign").click()
    expect(page.locator("#campaigns")).to_contain_text("Spring tea")
    expect(page.locator("#campaigns")).to_contain_text("2 pts per")

    page.locator("#a-campaign").select_option(label="Spring tea")
    page.get_by_label("Points per customer").fill("25")
    page.get_by_label("Tag segment").fill("vip")
    page.get_by_role("button", name="Award points").click()
    progress = page.locator("#award-progress")
    expect(page.locator("#award-status .badge")).to_have_text("done", timeout=60_000)
    done, recipients = progress.evaluate("p => [p.value, p.max]")
    assert done == recipients >= 1
    page.reload()
    expect(page.locator("#campaigns")).to_contain_text("Spring tea")
    visit.check("marketing")

    page.goto(live.url + f"/#/customer/{customer_id}")
    expect(page.locator("#chain-balance")).to_have_text("25", timeout=30_000)

    # A second award from a CSV upload (a header and an unrelated column), then a redemption.
    csv = tmp_path / "winners.csv"
    csv.write_text(f"customer_id,note\n{customer_id},winner\n", encoding="utf-8")
    page.goto(live.url + "/#/marketing")
    page.locator("#a-campaign").select_option(label="Spring tea")
    page.get_by_label("Points per customer").fill("10")
    page.get_by_label("CSV of customer ids").set_input_files(str(csv))
    page.get_by_role("button", name="Award points").click()
    expect(page.locator("#award-status .badge")).to_have_text("done", timeout=60_000)
    page.get_by_label("Customer id", exact=True).fill(customer_id)
    page.get_by_label("Points", exact=True).fill("5")
    page.get_by_label("Reward reference").fill("mug")
    page.get_by_role("button", name="Redeem").click()
    expect(page.locator("#redeem .badge")).to_have_text("redeemed", timeout=60_000)
    page.goto(live.url + f"/#/customer/{customer_id}")
    expect(page.locator("#chain-balance")).to_have_text("30", timeout=30_000)


def test_operations_charts_and_the_offline_verifier_with_an_export_bundle(
    visit: Visit, live: LiveService, anvil: LocalNode, tmp_path: Path, client_for: Clients
) -> None:
    page = visit.page
    api = client_for(Role.ADMIN)
    seed_customer(api, "Mary Jackson")
    erased_id, _ = seed_customer(api, "Dorothy Vaughan")
    assert api.delete(f"/v1/customers/{erased_id}/personal-data").status_code == 200
    visit.sign_in(live.key(Role.RECORDER))
    nav = page.get_by_role("navigation", name="Pages")
    expect(nav.get_by_role("link", name="Operations")).to_be_visible()
    expect(nav.get_by_role("link", name="Audit")).to_have_count(0)
    page.goto(live.url + "/#/audit")
    expect(page.get_by_role("heading", name="Not available")).to_be_visible()
    # A call the role may not make is shown as a 403 with the API's reason.
    page.evaluate("import('/console/api.js').then(m => m.api('/v1/campaigns')).catch(() => {})")
    expect(page.get_by_role("alert")).to_contain_text("403 Forbidden")

    # A key revoked or mistyped mid-session: the 401 is shown on the sign-in page.
    page.evaluate("sessionStorage.setItem('crm-ledger.api-key', 'crml_revoked')")
    page.evaluate("location.hash = '#/customers'")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("401 Unauthorized")
    visit.sign_in(live.key(Role.RECORDER))
    expect(page.locator("#who")).to_contain_text("recorder")

    # Erasure reaches the console: no name, no content, each record badged erased.
    page.goto(live.url + f"/#/customer/{erased_id}")
    expect(page.get_by_role("heading", name="Erased customer")).to_be_visible()
    expect(page.locator("#timeline .badge", has_text="erased")).to_have_count(4)
    expect(page.locator("main")).not_to_contain_text("Dorothy")
    expect(page.locator("#timeline")).not_to_contain_text("billing")

    page.goto(live.url + "/#/ops")
    expect(page.locator("svg.chart")).to_have_count(4)
    expect(page.locator("#lag")).to_contain_text(" s")
    expect(page.locator("#ops")).to_contain_text("running")
    visit.check("operations")

    bundle = api.get("/v1/audit/export").text
    good = tmp_path / "bundle.jsonl"
    good.write_text(bundle, encoding="utf-8")
    lines = bundle.splitlines()
    records = [json.loads(line) for line in lines if json.loads(line).get("type") == "record"]
    assert any(r["content"] is None for r in records)  # the erased customer's records
    index = next(i for i, line in enumerate(lines) if "billing" in line)
    record = json.loads(lines[index])
    record["content"] = record["content"].replace("billing", "refund!")
    lines[index] = json.dumps(record)
    bad = tmp_path / "tampered.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # The Python verifier's verdicts, which the browser's must match.
    assert check_bundle_offline(good.read_bytes().splitlines())[0].ok
    assert not check_bundle_offline(bad.read_bytes().splitlines())[0].ok

    page.get_by_role("button", name="Sign out").click()
    page.goto(live.url + "/#/verify")
    page.get_by_label("File").set_input_files(str(good))
    expect(page.locator("#file-status")).to_contain_text("a bundle")
    page.get_by_label("JSON-RPC URL the browser reads the chain from").fill(anvil.rpc_url)
    page.get_by_role("button", name="Verify this file in the browser").click()
    expect(page.locator(".verdict")).to_have_text("✓ Verified in this browser")
    expect(page.locator("li[data-step=chain]")).to_have_attribute("data-status", "ok")
    visit.check("verify-bundle")

    page.get_by_label("File").set_input_files(str(bad))
    page.get_by_role("button", name="Verify this file in the browser").click()
    expect(page.locator(".verdict")).to_have_text("✗ Verification failed")
    expect(page.locator("li[data-step=records]")).to_have_attribute("data-status", "failed")
    expect(page.locator("li[data-step=records]")).to_contain_text("commitment")
