"""The console's shell and files: served at / with a strict CSP that /docs does not get, no
inline script, nothing from another origin."""

from __future__ import annotations

import re
from typing import Any

from crm_ledger.console import CONTENT_SECURITY_POLICY
from tests.console.conftest import STATIC


def test_shell_and_files_carry_the_strict_policy_and_docs_keeps_its_own(client: Any) -> None:
    shell = client.get("/")
    assert shell.status_code == 200
    assert shell.headers["content-type"].startswith("text/html")
    csp = shell.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert shell.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "verifier.js", "style.css", "pages/customer.js"):
        served = client.get(f"/console/{name}")
        assert served.status_code == 200, name
        assert served.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert (
        client.get("/console/app.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "content-security-policy" not in docs.headers
    assert client.get("/console/nope.js").status_code == 404


def test_no_inline_script_or_style_and_nothing_from_another_origin() -> None:
    for path in STATIC.rglob("*"):
        if path.suffix not in (".html", ".js", ".css"):
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://(?!127\.0\.0\.1|www\.w3\.org/2000/svg)", text), path
        if path.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"inline script in {path}"
            assert " style=" not in text and "<style" not in text, path
            assert not re.search(r"\son[a-z]+=", text), f"inline handler in {path}"


def test_openapi_documents_the_console_endpoints_and_their_statuses(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    # 429: the key's rate limit; 503: the database down (every /v1 operation).
    assert set(paths["/v1/ops/overview"]["get"]["responses"]) == {
        "200",
        "401",
        "422",
        "429",
        "503",
    }
    assert set(paths["/v1/ops/campaigns/{campaign_id}/spend"]["get"]["responses"]) == {
        "200",
        "401",
        "403",
        "404",
        "422",
        "429",
        "503",
    }
    assert set(paths["/v1/me"]["get"]["responses"]) == {"200", "401", "429", "503"}
    assert "/v1/ops/chain" in paths and "/v1/ops/loyalty/expiring" in paths
    assert "/" not in paths
