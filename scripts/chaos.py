"""Chaos suite: the service under write load while its process, chain, database or disk fails.

Run `python scripts/chaos.py` (every scenario, full length: ~10 minutes) or pick some:
`python scripts/chaos.py kill chain --kills 5 --chain-outage 10`. Everything runs on 127.0.0.1
in temporary directories, every loop is bounded and every scenario stops by itself.

This is the command line; the scenarios, the load and the checks after each scenario are in
the `chaoslib` package next to it (one module per scenario, its docstring describes them all).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import chaoslib
from chaoslib import SCENARIOS, format_table, run_scenarios


def main() -> int:
    """Parse the command line, run the scenarios, print the table; 1 if any figure is wrong."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=chaoslib.__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--chain-outage", type=float, default=60.0)
    parser.add_argument("--pg-restarts", type=int, default=5)
    parser.add_argument("--disk-full-seconds", type=float, default=10.0)
    parser.add_argument("--fuzz-examples", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the outcomes to this file")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: choose from {', '.join(SCENARIOS)}")
    outcomes = run_scenarios(
        args.scenarios or list(SCENARIOS),
        kills=args.kills,
        chain_outage=args.chain_outage,
        pg_restarts=args.pg_restarts,
        disk_full_seconds=args.disk_full_seconds,
        fuzz_examples=args.fuzz_examples,
    )
    print(format_table(outcomes))
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=2))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
