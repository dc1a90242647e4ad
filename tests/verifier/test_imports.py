"""The verifier is a package of its own: it imports the pure ledger format and nothing else of
the service, and no SQLAlchemy, FastAPI or web3, neither at import time nor lazily."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import crm_ledger.verifier

PACKAGE_DIR = Path(crm_ledger.verifier.__file__).parent
ALLOWED_OWN = ("crm_ledger.verifier", "crm_ledger.ledger", "crm_ledger.errors")
FORBIDDEN_THIRD_PARTY = {"sqlalchemy", "fastapi", "starlette", "web3", "alembic", "aiohttp"}


def _modules() -> list[str]:
    return sorted(
        "crm_ledger.verifier" + ("" if p.stem == "__init__" else f".{p.stem}")
        for p in PACKAGE_DIR.glob("*.py")
    )


def _is_allowed_own(name: str) -> bool:
    return name == "crm_ledger" or name.startswith(tuple(f"{a}" for a in ALLOWED_OWN))


def test_every_import_statement_of_the_verifier_is_allowed() -> None:
    offending: list[str] = []
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in FORBIDDEN_THIRD_PARTY or (
                    top == "crm_ledger" and not _is_allowed_own(name)
                ):
                    offending.append(f"{path.name}:{node.lineno} imports {name}")
    assert offending == []


def test_importing_the_verifier_loads_no_service_or_web_code() -> None:
    program = (
        "import importlib, json, sys\n"
        f"for name in {_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", program], check=True, capture_output=True, text=True
        ).stdout
    )
    assert "crm_ledger.verifier.check" in loaded  # the program did import the package
    bad = [
        name
        for name in loaded
        if name.split(".")[0] in FORBIDDEN_THIRD_PARTY
        or (name.startswith("crm_ledger") and not _is_allowed_own(name))
    ]
    assert bad == []
