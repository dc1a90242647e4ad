"""Prometheus metrics: every metric object the service exports is defined here, and what
`/metrics` answers (`exposition`).

Exports: the metric objects, `exposition`, `collect_children`, `MULTIPROCESS_DIR_ENV`.

`crm-ledger serve` may run several processes: N API processes (`--workers N`) and worker
children (the shop-webhook mapper). Each counts what it does, and `/metrics` answers for the
whole service whichever process takes the request: the processes `serve` starts keep their
values in files in one directory (prometheus_client's multiprocess mode, `MULTIPROCESS_DIR_ENV`,
set by `serve` for them), and `exposition` adds them up. Counters and histograms are summed over
the processes (a process that died still counts); a gauge set by whichever process runs a
singleton worker (lags, backlog, drift) shows the value last set by a live process; and
`crm_ledger_worker_state` carries a `pid` label: each process's own state for each worker (one
`running`, the others `standby`), the processes that died dropped. With one API process the
API's own values stay in memory and the children's files are added to them (`collect_children`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

#: prometheus_client's multiprocess directory, read when prometheus_client is imported.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# `_created` series (a counter's creation time) mean little summed over processes.
disable_created_metrics()  # type: ignore[no-untyped-call]

anchoring_lag_seconds = Gauge(
    "crm_ledger_anchoring_lag_seconds",
    "Age of the oldest record not yet cut into a batch",
    multiprocess_mode="livemostrecent",
)
records_pending = Gauge(
    "crm_ledger_records_pending",
    "Records waiting for a batch",
    multiprocess_mode="livemostrecent",
)
batches_anchored_total = Counter(
    "crm_ledger_batches_anchored_total", "Batches whose anchor transaction was mined"
)
anchor_replacements_total = Counter(
    "crm_ledger_anchor_replacements_total",
    "Stuck anchor transactions replaced under the same nonce with higher fees",
)
anchor_gas_used_total = Counter(
    "crm_ledger_anchor_gas_used_total", "Gas used by mined anchor transactions"
)

http_requests_total = Counter(
    "crm_ledger_http_requests_total",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
)
http_request_duration_seconds = Histogram(
    "crm_ledger_http_request_duration_seconds",
    "Time from the first byte of a request to the last byte of its response",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
records_written_total = Counter(
    "crm_ledger_records_written_total", "Records committed to the journal, by kind", ["kind"]
)
group_commit_size = Histogram(
    "crm_ledger_group_commit_size",
    "API writes that shared one database commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

indexer_lag_blocks = Gauge(
    "crm_ledger_indexer_lag_blocks",
    "Confirmed blocks the indexer has not read yet (chain head minus confirmations minus cursor)",
    multiprocess_mode="livemostrecent",
)
indexer_lag_seconds = Gauge(
    "crm_ledger_indexer_lag_seconds",
    "Seconds since the indexer last had read every confirmed block",
    multiprocess_mode="livemostrecent",
)
indexer_events_total = Counter(
    "crm_ledger_indexer_events_total", "Chain events the indexer stored, by event", ["event"]
)
indexer_reorgs_total = Counter(
    "crm_ledger_indexer_reorgs_total", "Reorganisations the indexer rolled back"
)
drift_items = Gauge(
    "crm_ledger_drift_items",
    "Disagreements between the database and the chain in the latest reconciliation, by kind",
    ["kind"],
    multiprocess_mode="livemostrecent",
)
drift_detected_total = Counter(
    "crm_ledger_drift_detected_total",
    "Disagreements found that the previous reconciliation did not have, by kind",
    ["kind"],
)

worker_state = Gauge(
    "crm_ledger_worker_state",
    "1 for the state each background worker is in, 0 for the others (by process: `pid`)",
    ["worker", "state"],
    multiprocess_mode="liveall",
)
worker_items_total = Counter(
    "crm_ledger_worker_items_total", "Items background workers handled, by worker", ["worker"]
)
worker_failures_total = Counter(
    "crm_ledger_worker_failures_total",
    "Steps of background workers that failed and were backed off, by worker",
    ["worker"],
)


# Whether this process keeps its own values in files (prometheus_client decided when imported).
_OWN_VALUES_IN_FILES = values.ValueClass is not values.MutexValue
# Where the children of a process that keeps its values in memory keep theirs.
_children_dir: Path | None = None
# Families whose samples get this process's pid when its in-memory values are shown beside files.
_BY_PROCESS = {"crm_ledger_worker_state"}


def collect_children(directory: Path | None) -> None:
    """Add to `exposition` what the processes writing to `directory` count (None: stop).

    For a process that keeps its own values in memory and starts children that write theirs
    to `directory` (`serve` with one API process and the mapper's child process)."""
    global _children_dir
    _children_dir = directory


def exposition() -> bytes:
    """The Prometheus text `/metrics` answers: every process of the service (module docstring)."""
    if _OWN_VALUES_IN_FILES:
        directory = Path(os.environ[MULTIPROCESS_DIR_ENV])
    elif _children_dir is not None:
        directory = _children_dir
    else:
        return generate_latest(REGISTRY)
    _forget_dead_processes(directory)
    registry = CollectorRegistry()
    files = MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(files if _OWN_VALUES_IN_FILES else _Merged(REGISTRY, files))
    return generate_latest(registry)


def _forget_dead_processes(directory: Path) -> None:
    """Drop the live-only gauges of processes that ended (a worker child restarted, an API
    process uvicorn replaced): nothing else tells prometheus_client that they died."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            # Another process answering /metrics may remove the same files first.
            with contextlib.suppress(FileNotFoundError):
                mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, someone else's
            pass


class _Merged(Collector):
    """This process's in-memory values with the files' (its children's), added up: counter and
    histogram samples summed, this process's gauge values kept, the files' other samples added."""

    def __init__(self, own: Collector, files: Collector) -> None:
        self._own = own
        self._files = files

    def collect(self) -> list[Metric]:
        families: dict[str, Metric] = {}
        pid = str(os.getpid())
        for family in self._own.collect():
            if family.name in _BY_PROCESS:
                family.samples = [
                    sample._replace(labels={**sample.labels, "pid": pid})
                    for sample in family.samples
                ]
            families[family.name] = family
        for family in self._files.collect():
            own = families.setdefault(family.name, family)
            if own is family:
                continue
            index = {_key(sample): n for n, sample in enumerate(own.samples)}
            for sample in family.samples:
                n = index.get(_key(sample))
                if n is None:
                    own.samples.append(sample)
                elif own.type in ("counter", "histogram"):
                    own.samples[n] = own.samples[n]._replace(
                        value=own.samples[n].value + sample.value
                    )
        return list(families.values())


def _key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.name, tuple(sorted(sample.labels.items()))
