"""Write throughput of the API against a bare FastAPI app under the same server (issue 14).

Both sides are driven by `wrk -t2 -c16 -d{seconds}s` with the same JSON body, one after the
other in the same run, so the ratio holds on a loaded machine:

  single    POST /v1/interactions. `crm-ledger serve` (SQLite at synchronous=FULL by default, a
            fresh in-memory Anvil started here) against `bench_api_bare:app` under uvicorn: the
            same request model, no database, no auth, no middleware. Requests/s, p99, ratio.
  batch     POST /v1/interactions/batch of 1,000 items (wrk with 4 connections) against the
            bare endpoint that validates the batch and writes nothing. Records/s and ratio.

`--workers N` runs both sides with N processes (`serve --workers N`, `uvicorn --workers N`).
`--profile FILE` records the service with py-spy during its first phase (raw collapsed
stacks in FILE; `--no-single` makes that the batch phase) and prints the frames where the
samples fall, by own and by total time.

Usage:
    python scripts/bench_api.py [--seconds 10] [--workers 1] [--no-batch | --no-single]
                                [--profile FILE] [--gil]
                                [--database-url postgresql+psycopg://postgres@127.0.0.1/test]

With `--database-url` the service writes to a fresh database made next to the one named (and
dropped afterwards); without it, to SQLite in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import benchlib
import httpx
from benchlib import free_port
from sqlalchemy import create_engine, make_url, text

from crm_ledger.chain.node import start_anvil

SCRIPTS = Path(__file__).resolve().parent
BATCH_ITEMS = 1000
LUA = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""
_LATENCY = re.compile(r"^\s*99(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$")
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class WrkResult:
    """What wrk measured: requests/s, p99 in ms, answers that were not 2xx, socket errors."""

    rate: float
    p99_ms: float
    non_2xx: int
    errors: str


def interaction(customer: str, n: int) -> dict[str, object]:
    """The interaction every request sends (the single phase uses n=0 throughout)."""
    return {
        "customer_id": customer,
        "type": "support_call",
        "channel": "phone",
        "occurred_at": "2026-11-25T10:00:00Z",
        "details": {"ticket": n, "topic": "billing"},
    }


def write_bodies(work: Path, customer: str) -> tuple[Path, Path]:
    """The single and the batch request bodies, as files wrk's script reads."""
    single = work / "single.json"
    single.write_text(json.dumps(interaction(customer, 0)))
    batch = work / "batch.json"
    items = [interaction(customer, n) for n in range(BATCH_ITEMS)]
    batch.write_text(json.dumps({"items": items}))
    return single, batch


def run_wrk(url: str, body: Path, key: str, *, connections: int, seconds: int) -> WrkResult:
    """Drive `url` with wrk for `seconds`; parse its rate and p99."""
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("wrk is not installed (make bootstrap, or apt-get install wrk)")
    script = body.with_suffix(".lua")
    script.write_text(LUA.format(body=body, key=key))
    out = subprocess.run(
        [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate, p99, non_2xx, errors = float("nan"), float("nan"), 0, ""
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            rate = float(line.split()[1])
        elif line.strip().startswith("Non-2xx"):
            non_2xx = int(line.split()[-1])
        elif line.strip().startswith("Socket errors"):
            errors = line.strip()
        elif match := _LATENCY.match(line):
            p99 = float(match[1]) * _UNITS[match[2]]
    return WrkResult(rate, p99, non_2xx, errors)


@contextmanager
def bare_server(workers: int) -> Iterator[str]:
    """The bare app under uvicorn (as `serve` runs it: no access log); yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench_api_bare:app",
            "--app-dir",
            str(SCRIPTS),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(f"{url}/openapi.json")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_up(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def fresh_database(url: str | None) -> Iterator[str | None]:
    """A new PostgreSQL database beside the one `url` names, dropped afterwards (None: SQLite)."""
    if url is None:
        yield None
        return
    name = f"bench_api_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def create_customer(url: str, key: str) -> str:
    """One customer every request writes to."""
    answer = httpx.post(
        f"{url}/v1/customers",
        json={"name": "Bench", "email": "bench@example.com"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    answer.raise_for_status()
    return str(answer.json()["id"])


@contextmanager
def profiled(pid: int, out: Path | None, seconds: int, *, gil: bool) -> Iterator[None]:
    """py-spy recording `pid` and its children for `seconds` (nothing without `out`); with
    `gil`, only the thread holding the GIL (CPU spent in Python, not waits)."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    process = subprocess.Popen(
        [
            *(spy, "record", "--format", "raw", "--subprocesses", "--rate", "200"),
            # A second short of the phase, so no sample falls in the next one.
            *("--pid", str(pid), "--duration", str(max(1, seconds - 1)), "--output", str(out)),
            "--nonblocking",
            *(["--gil"] if gil else []),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.wait(timeout=seconds + 60)


def top_frames(raw: Path, n: int = 15) -> str:
    """Where the samples of a py-spy raw (collapsed) profile fall: the innermost frame of each
    sample (own time), and crm-ledger's own functions by the samples they are on (total)."""
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames if "crm_ledger/" in f and "cli.py" not in f}:
            ours[frame] += count
    lines = [f"{samples} samples"]
    for title, counter in (("own time", own), ("total time, crm-ledger's functions", ours)):
        lines.append(f"top {n} by {title}:")
        lines += [f"  {100 * c / samples:5.1f} %  {f}" for f, c in counter.most_common(n)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`func (/long/path/site-packages/pkg/mod.py:12)` → `func (pkg/mod.py)`."""
    match = re.match(r"^(.*) \((.*?):\d+\)$", frame)
    if match is None:
        return frame
    function, path = match.groups()
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{function} ({path})"


def measure(
    url: str, key: str, bodies: tuple[Path, Path], args: argparse.Namespace
) -> dict[str, WrkResult]:
    """The single phase unless `--no-single`, then the batch phase unless `--no-batch`."""
    single, batch = bodies
    results: dict[str, WrkResult] = {}
    if args.single:
        results["single"] = run_wrk(
            f"{url}/v1/interactions", single, key, connections=16, seconds=args.seconds
        )
    if args.batch:
        results["batch"] = run_wrk(
            f"{url}/v1/interactions/batch", batch, key, connections=4, seconds=args.seconds
        )
    return results


def report(
    ours: dict[str, WrkResult], bare: dict[str, WrkResult], args: argparse.Namespace
) -> None:
    """Print the figures and the ratios."""
    print(f"\nworkers {args.workers}, wrk -t2, {args.seconds} s each, load {_load()}")
    for phase, scale, unit in (("single", 1, "requests/s"), ("batch", BATCH_ITEMS, "records/s")):
        if phase not in ours:
            continue
        o, b = ours[phase], bare[phase]
        print(
            f"{phase:6}  crm-ledger {o.rate * scale:9.0f} {unit}, p99 {o.p99_ms:7.1f} ms"
            f"{_problems(o)}\n        bare       {b.rate * scale:9.0f} {unit}, p99 "
            f"{b.p99_ms:7.1f} ms{_problems(b)}\n        ratio      {o.rate / b.rate:9.1%}"
        )


def _problems(result: WrkResult) -> str:
    shown = [f"{result.non_2xx} non-2xx"] if result.non_2xx else []
    shown += [result.errors] if result.errors else []
    return f" ({'; '.join(shown)})" if shown else ""


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per phase")
    parser.add_argument("--workers", type=int, default=1, help="API processes on each side")
    parser.add_argument("--no-batch", dest="batch", action="store_false", help="single only")
    parser.add_argument("--no-single", dest="single", action="store_false", help="batch only")
    parser.add_argument("--database-url", help="PostgreSQL server to make a fresh database on")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the service")
    parser.add_argument("--gil", action="store_true", help="profile only the GIL holder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="crm-ledger-bench-api-"))
    node = start_anvil(port=free_port(), state_path=None)
    try:
        with fresh_database(args.database_url) as database_url:
            env = {"CRM_LEDGER_DATABASE_URL": database_url} if database_url else {}
            service = benchlib.Service(
                work / "data",
                node.rpc_url,
                env=env,
                serve_args=("--workers", str(args.workers)) if args.workers > 1 else (),
            )
            try:
                bodies = write_bodies(work, create_customer(service.url, service.key))
                with profiled(service.process.pid, args.profile, args.seconds, gil=args.gil):
                    ours = measure(service.url, service.key, bodies, args)
            finally:
                service.stop()
        with bare_server(args.workers) as url:
            bare = measure(url, "unused", bodies, args)
        report(ours, bare, args)
        if args.profile is not None:
            print(top_frames(args.profile))
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
