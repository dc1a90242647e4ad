"""`crm_ledger.serving.tune_garbage_collector`: what `serve` and `crm-ledger worker` do to the
collector, checked in a process of its own (the test process keeps CPython's defaults)."""

from __future__ import annotations

import json
import subprocess
import sys

from crm_ledger.serving import GC_YOUNG_THRESHOLD

_PROBE = """
import gc, json
from crm_ledger.serving import tune_garbage_collector
before = gc.get_threshold()
tune_garbage_collector()
frozen = gc.get_freeze_count()
class Node:
    pass
for _ in range(5):  # cycles made after startup are still collected
    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": frozen,
                  "collected": gc.collect()}))
"""


def test_the_service_collects_young_objects_in_larger_steps_and_freezes_startup() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True
    ).stdout
    figures = json.loads(out)
    assert figures["before"][0] == 700  # CPython's default, untouched until then
    assert figures["after"][0] == GC_YOUNG_THRESHOLD
    assert figures["frozen"] > 10_000  # the imported service, out of every collection
    assert figures["collected"] >= 10  # five two-object cycles: still found and freed
