"""The committed artifacts match a fresh compile of contracts/, and load_artifact reads them."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from crm_ledger.chain.artifacts import load_artifact

REPO = Path(__file__).resolve().parents[2]
COMPILE_SCRIPT = REPO / "scripts" / "compile_contracts.py"


def run_compile_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run scripts/compile_contracts.py with this interpreter; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, str(COMPILE_SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_committed_artifacts_match_a_fresh_compile() -> None:
    result = run_compile_script("--check")
    assert result.returncode == 0, result.stderr


def test_check_names_each_artifact_that_drifted(tmp_path: Path) -> None:
    committed = resources.files("crm_ledger.chain.artifacts").joinpath("AuditLedger.json")
    drifted = tmp_path / "AuditLedger.json"
    drifted.write_text(committed.read_text().replace('"runs": 200', '"runs": 201'))
    (tmp_path / "Removed.json").write_text("{}\n")

    result = run_compile_script("--check", "--artifacts-dir", str(tmp_path))

    assert result.returncode == 1
    assert f"{drifted} differs from a fresh compile" in result.stderr
    assert f"{tmp_path / 'Removed.json'} has no contract" in result.stderr


def test_load_artifact_reads_the_generated_file() -> None:
    artifact = load_artifact("AuditLedger")
    document = json.loads(
        resources.files("crm_ledger.chain.artifacts").joinpath("AuditLedger.json").read_text()
    )

    assert artifact.name == "AuditLedger"
    assert artifact.abi == document["abi"]
    assert artifact.bytecode.hex() == document["bytecode"].removeprefix("0x")
    assert artifact.deployed_bytecode.hex() == document["deployedBytecode"].removeprefix("0x")
    assert artifact.compiler == document["_generated"]["compiler"]
    assert document["_generated"]["source"] == "contracts/AuditLedger.sol:AuditLedger"
    assert load_artifact("AuditLedger") is artifact


@pytest.mark.parametrize("name", ["NoSuchContract", "../AuditLedger", ""])
def test_load_artifact_rejects_unknown_names(name: str) -> None:
    with pytest.raises((FileNotFoundError, ValueError), match=r"artifact|contract name"):
        load_artifact(name)


def test_solc_wrapper_speaks_the_native_command_line() -> None:
    solc = REPO / "hardhat-local" / "bin" / "solc"
    version = subprocess.run([solc, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("solc, the solidity compiler commandline interface\nVersion: ")

    unknown = subprocess.run([solc, "--bin"], capture_output=True, text=True, check=False)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("unrecognised option '--bin'")
