"""Compile contracts/*.sol into src/crm_ledger/chain/artifacts/<Contract>.json.

Usage:
    python scripts/compile_contracts.py            write (or rewrite) the artifacts
    python scripts/compile_contracts.py --check    exit 1, naming each artifact that differs
                                                   from a fresh compile; write nothing

The compiler is solc-js (npm `solc`, pinned in hardhat-local/package.json), driven by py-solc-x
through the `hardhat-local/bin/solc` wrapper, because native solc binaries cannot be downloaded
here. Every contract defined in a contracts/*.sol file gets one artifact; imported contracts
(OpenZeppelin) get none. Output is deterministic (sorted keys, fixed indentation, no
timestamps, relative source names), so a fresh compile and a committed artifact compare equal
byte for byte.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import solcx

REPO = Path(__file__).resolve().parent.parent
CONTRACTS_DIR = REPO / "contracts"
ARTIFACTS_DIR = REPO / "src" / "crm_ledger" / "chain" / "artifacts"
SOLC_BINARY = REPO / "hardhat-local" / "bin" / "solc"
SCRIPT_NAME = "scripts/compile_contracts.py"

SETTINGS: dict[str, Any] = {
    "evmVersion": "cancun",
    "optimizer": {"enabled": True, "runs": 200},
}
OUTPUT_SELECTION = {
    "*": {"*": ["abi", "metadata", "evm.bytecode.object", "evm.deployedBytecode.object"]}
}


def compile_sources(contracts_dir: Path) -> dict[str, str]:
    """Compile every .sol file in `contracts_dir`; return {artifact file name: JSON text}."""
    source_files = sorted(contracts_dir.glob("*.sol"))
    if not source_files:
        raise SystemExit(f"no .sol files in {contracts_dir}")
    sources = {
        f"contracts/{path.name}": {"content": path.read_text(encoding="utf-8")}
        for path in source_files
    }
    output = solcx.compile_standard(
        {
            "language": "Solidity",
            "sources": sources,
            "settings": {**SETTINGS, "outputSelection": OUTPUT_SELECTION},
        },
        base_path=REPO,
        solc_binary=SOLC_BINARY,
    )
    for message in output.get("errors", []):
        print(message["formattedMessage"], file=sys.stderr)

    artifacts: dict[str, str] = {}
    for source_name in sources:
        for contract_name, contract in output["contracts"].get(source_name, {}).items():
            file_name = f"{contract_name}.json"
            if file_name in artifacts:
                raise SystemExit(f"two contracts named {contract_name} in contracts/")
            artifacts[file_name] = render_artifact(
                source=f"{source_name}:{contract_name}", contract=contract
            )
    return artifacts


def render_artifact(*, source: str, contract: dict[str, Any]) -> str:
    """The artifact JSON text for one compiled contract, in its one canonical formatting."""
    bytecode = contract["evm"]["bytecode"]["object"]
    deployed_bytecode = contract["evm"]["deployedBytecode"]["object"]
    for code in (bytecode, deployed_bytecode):
        if "__$" in code:
            raise SystemExit(f"{source} needs library linking, which artifacts do not support")
    artifact = {
        "_generated": {
            "by": SCRIPT_NAME,
            "compiler": json.loads(contract["metadata"])["compiler"]["version"],
            "notice": f"Generated file, do not edit: change the source and rerun {SCRIPT_NAME}.",
            "settings": SETTINGS,
            "source": source,
        },
        "abi": contract["abi"],
        "bytecode": f"0x{bytecode}",
        "deployedBytecode": f"0x{deployed_bytecode}",
    }
    return json.dumps(artifact, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale_or_missing(artifacts: dict[str, str], artifacts_dir: Path) -> list[str]:
    """One line per artifact file in `artifacts_dir` that does not match `artifacts`."""
    problems = []
    on_disk = {path.name for path in artifacts_dir.glob("*.json")}
    for file_name, text in sorted(artifacts.items()):
        path = artifacts_dir / file_name
        if file_name not in on_disk:
            problems.append(f"{path} is missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path} differs from a fresh compile")
    for file_name in sorted(on_disk - artifacts.keys()):
        problems.append(f"{artifacts_dir / file_name} has no contract in {CONTRACTS_DIR}")
    return problems


def write_artifacts(artifacts: dict[str, str], artifacts_dir: Path) -> None:
    """Make `artifacts_dir` hold exactly `artifacts`, touching only files that change."""
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    for file_name, text in sorted(artifacts.items()):
        path = artifacts_dir / file_name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path}")
    for path in sorted(artifacts_dir.glob("*.json")):
        if path.name not in artifacts:
            path.unlink()
            print(f"removed {path} (no such contract in {CONTRACTS_DIR})")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare the artifacts with a fresh compile; exit 1 if any differs",
    )
    parser.add_argument(
        "--artifacts-dir",
        type=Path,
        default=ARTIFACTS_DIR,
        help="where the artifacts live (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    artifacts = compile_sources(CONTRACTS_DIR)
    if not args.check:
        write_artifacts(artifacts, args.artifacts_dir)
        return 0
    problems = stale_or_missing(artifacts, args.artifacts_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"run: python {SCRIPT_NAME}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
