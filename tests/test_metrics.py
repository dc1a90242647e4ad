"""`/metrics` answers for every process of the service (`crm_ledger.metrics.exposition`): the
counters and histograms of the processes `serve` starts are summed, a gauge is the process's
own, `crm_ledger_worker_state` is by process (`pid`), and a process that ended drops out of
the gauges but still counts.

Each child here is a real process that imports `crm_ledger.metrics` with prometheus_client's
multiprocess directory set, as `serve`'s children do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from crm_ledger import metrics

# A child that counts, sets gauges, says so, then waits until its stdin closes; or, given an
# argument, prints the exposition it makes itself (a process that keeps its values in files).
CHILD = """
import sys
from crm_ledger import metrics
metrics.worker_items_total.labels(worker="ingest").inc(3)
metrics.worker_state.labels(worker="ingest", state="running").set(1)
metrics.http_request_duration_seconds.labels("POST", "/v1/test").observe(0.003)
metrics.records_pending.set(7)
if len(sys.argv) > 1:
    sys.stdout.write(metrics.exposition().decode())
    raise SystemExit
print("counted", flush=True)
sys.stdin.readline()
"""


def _start(directory: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        env={**os.environ, metrics.MULTIPROCESS_DIR_ENV: str(directory)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _counting(directory: Path) -> subprocess.Popen[str]:
    child = _start(directory)
    assert child.stdout is not None and child.stdout.readline() == "counted\n"
    return child


def _end(child: subprocess.Popen[str]) -> None:
    """Close the child's stdin (it ends), wait for it, close its stdout."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.close()
    child.wait(timeout=60)
    child.stdout.close()


def _samples(text: str | bytes, name: str) -> list[tuple[dict[str, str], float]]:
    text = text.decode() if isinstance(text, bytes) else text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def _value(text: str | bytes, name: str, **labels: str) -> float | None:
    found = [value for found, value in _samples(text, name) if found == labels]
    assert len(found) <= 1, found
    return found[0] if found else None


def _own(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def children_dir(tmp_path: Path) -> Iterator[Path]:
    """This (test) process keeps its values in memory; its children write to this directory."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    metrics.collect_children(directory)
    pending = _own("crm_ledger_records_pending")
    metrics.records_pending.set(11)
    yield directory
    metrics.records_pending.set(pending)
    metrics.collect_children(None)


def test_the_childrens_counts_are_added_to_this_processs_and_their_states_shown_by_pid(
    children_dir: Path,
) -> None:
    items = "crm_ledger_worker_items_total"
    own = _own(items, worker="ingest")
    first, second = _counting(children_dir), _counting(children_dir)
    try:
        text = metrics.exposition()
        assert _value(text, items, worker="ingest") == own + 6
        running = _samples(text, "crm_ledger_worker_state")
        for child in (first, second):
            labels = {"worker": "ingest", "state": "running", "pid": str(child.pid)}
            assert (labels, 1.0) in running
        duration = "crm_ledger_http_request_duration_seconds_count"
        assert _value(text, duration, method="POST", route="/v1/test") == 2
        # A gauge is this process's own, not a child's nor a sum.
        assert _value(text, "crm_ledger_records_pending") == 11

        _end(first)
        text = metrics.exposition()
        pids = {labels.get("pid") for labels, _ in _samples(text, "crm_ledger_worker_state")}
        assert str(first.pid) not in pids and str(second.pid) in pids
        assert _value(text, items, worker="ingest") == own + 6  # what the ended child did counts
    finally:
        _end(first)
        _end(second)


def test_a_process_that_keeps_its_values_in_files_answers_for_all_of_them(
    tmp_path: Path,
) -> None:
    """As each API process of `serve --workers N` does."""
    other = _counting(tmp_path)
    try:
        answering = _start(tmp_path, "--expose")
        out, _ = answering.communicate(timeout=60)  # closes its pipes
        assert answering.returncode == 0
    finally:
        _end(other)
    assert _value(out, "crm_ledger_worker_items_total", worker="ingest") == 6
    assert _value(out, "crm_ledger_records_pending") == 7  # the latest set by a live process
    assert {labels["pid"] for labels, _ in _samples(out, "crm_ledger_worker_state")} == {
        str(other.pid),
        str(answering.pid),
    }


def test_one_process_alone_answers_with_its_own_registry() -> None:
    assert _value(metrics.exposition(), "crm_ledger_records_pending") == _own(
        "crm_ledger_records_pending"
    )
