"""The `fuzz` scenario: schemathesis against /openapi.json with a key of every role."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .harness import BIN, ROLES, Outcome, Service, external_anvil


def scenario_fuzz(work: Path, *, examples: int, phases: str) -> Outcome:
    """schemathesis against /openapi.json with a key of each role; 5xx counted by the service."""
    outcome = Outcome(
        "schemathesis, 4 roles", notes=[f"{examples} examples per operation, phases {phases}"]
    )
    with external_anvil() as chain:
        service = Service({"CRM_LEDGER_DATA_DIR": str(work), "CRM_LEDGER_RPC_URL": chain.rpc_url})
        keys = {role: service.cli("keys", "create", "--role", role) for role in ROLES}
        service.start()
        try:
            for role, key in keys.items():
                finished = subprocess.run(
                    [
                        str(BIN / "st"),
                        "run",
                        f"{service.url}/openapi.json",
                        "--header",
                        f"Authorization: Bearer {key}",
                        "--checks",
                        "not_a_server_error",
                        "--max-examples",
                        str(examples),
                        "--workers",
                        "1",
                        "--request-timeout",
                        "20",
                        "--seed",
                        "10",
                        "--phases",
                        phases,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=900,
                    cwd=work,  # its .schemathesis/ cache stays in the scenario's directory
                )
                outcome.notes.append(f"{role}: schemathesis exit {finished.returncode}")
                if finished.returncode not in (0, 1):
                    outcome.notes.append(finished.stdout[-2000:] + finished.stderr[-2000:])
            answers = service.answers_counted()
            outcome.server_errors = service.server_errors_counted()
            outcome.unavailable = answers.get(503, 0)
            by_class = {
                f"{c}xx": sum(n for s, n in answers.items() if s // 100 == c) for c in (2, 4, 5)
            }
            outcome.notes.append(f"{sum(answers.values())} requests answered: {by_class}")
        finally:
            service.stop()
    return outcome
