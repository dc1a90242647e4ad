"""Generate the client's sync resources from its async ones, so they are written once.

Usage:
    python scripts/unasync_client.py            write (or rewrite) the sync modules
    python scripts/unasync_client.py --check    exit 1, naming each sync module that differs
                                                from a fresh generation; write nothing

`src/crm_ledger/client/async_resources.py` becomes `resources.py` and `async_integrations.py`
becomes `integrations.py`: unasync (python-trio) drops `async` and `await` token by token,
`AsyncX` names lose their prefix, `asyncio` becomes `time` (so `asyncio.sleep` is
`time.sleep`) and `ASend` becomes `Send`; ruff then sorts the imports and formats the result
as it does the rest of the tree. Each generated module opens with a comment naming its source.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import unasync  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "src" / "crm_ledger" / "client"
SCRIPT_NAME = "scripts/unasync_client.py"
#: async source -> generated sync module, both in src/crm_ledger/client/.
MODULES = {"async_resources.py": "resources.py", "async_integrations.py": "integrations.py"}
RENAMES = {"ASend": "Send", "asyncio": "time"} | {
    Path(source).stem: Path(target).stem for source, target in MODULES.items()
}
_ASYNC_NAME = re.compile(r"\bAsync([A-Z]\w*)")


def _ruff(*args: str, source: str, target: Path) -> str:
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run(
        [str(ruff), *args, "--stdin-filename", str(target), "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return done.stdout


def generate(source: Path, target: Path) -> str:
    """The sync module that `source` (async) becomes, as `target` should hold it."""
    text = source.read_text()
    renames = RENAMES | {f"Async{name}": name for name in _ASYNC_NAME.findall(text)}
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp, "_async", source.name)
        staged.parent.mkdir()
        shutil.copyfile(source, staged)
        unasync.unasync_files([str(staged)], [unasync.Rule("_async", "_sync", renames)])
        plain = Path(tmp, "_sync", source.name).read_text()
    header = (
        f"# Generated from {source.name} by {SCRIPT_NAME}: do not edit.\n"
        f"# Change the async module and run `python {SCRIPT_NAME}`.\n"
    )
    # Sorted imports (`asyncio` became a second `import time`), and `yield from` where the
    # async code had to loop.
    fixed = _ruff(
        "check",
        "--fix",
        "--unsafe-fixes",
        "--select",
        "I,UP028",
        source=header + plain,
        target=target,
    )
    return _ruff("format", source=fixed, target=target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    stale = []
    for source_name, target_name in MODULES.items():
        target = CLIENT / target_name
        fresh = generate(CLIENT / source_name, target)
        if args.check:
            if not target.exists() or target.read_text() != fresh:
                stale.append(target.relative_to(REPO))
        else:
            target.write_text(fresh)
    for path in stale:
        print(f"{path} differs from its async source: run python {SCRIPT_NAME}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
