"""How Anvil's state file grows with anchored batches, and what saving and restarting it cost.

Starts Anvil as the service does (`start_anvil` with a state file, so the `StateSaver` runs),
deploys an AuditLedger and anchors batches straight against Anvil as fast as it takes them
(signed locally and sent one after another, so each batch gets a block of its own, as a quiet
shop's anchorer makes them). At each checkpoint (`--checkpoints 1000,10000,25000`) it prints:

  state      the state file's size (bytes per batch), as a save writes it
  dump       `anvil_dumpState`: what Anvil spends serialising (and gzipping) its state, the work
             its own `--state-interval` repeats every interval
  save       a whole `StateSaver` save (dump, unzip, write, fsync) and the pause it then leaves
             (the save / 5 %)
  restart    a clean stop (Anvil writes the file on exit) and a start from the file, with the
             checks `chain.anvil_state` makes before it
  rss        Anvil's resident memory

and a straight-line extrapolation of size, dump, save and restart to `--extrapolate` batches
(1,000,000) from the last two checkpoints. The figures are one machine's on one run: the ratio
between checkpoints is the finding, and the load average is printed with them.

Usage:
    python scripts/bench_anvil_state.py [--checkpoints 1000,10000,25000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from bench_soak import rss_mib
from benchlib import free_port
from eth_account import Account
from web3 import Web3

from crm_ledger.chain.anvil_saver import StateSaver
from crm_ledger.chain.artifacts import load_artifact
from crm_ledger.chain.node import LocalNode, start_anvil
from crm_ledger.chain.signer import dev_account

RECORDS_PER_BATCH = 100
CATCH_UP_EVERY = 200


@dataclass(frozen=True)
class Checkpoint:
    """The figures at one number of anchored batches."""

    batches: int
    state_bytes: int
    dump_seconds: float
    save_seconds: float
    restart_seconds: float
    rss_mib: float
    load: str


class Anchorer:
    """Anchors batches on the AuditLedger it deploys, signing locally with dev account 0."""

    def __init__(self, rpc_url: str) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 120}))
        self.account = dev_account(0)
        artifact = load_artifact("AuditLedger")
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        zero = "0x" + "00" * 20
        deploy = factory.constructor(self.account.address, self.account.address, 1, zero)
        nonce = self.w3.eth.get_transaction_count(self.account.address)
        tx = deploy.build_transaction(
            {"from": self.account.address, "chainId": 31337, "nonce": nonce}
        )
        signed = Account.sign_transaction(tx, self.account.key)
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_raw_transaction(signed.raw_transaction)
        )
        self.contract = self.w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)
        self.nonce = self.w3.eth.get_transaction_count(self.account.address)
        self.batches = 0

    def anchor(self, rpc_url: str, batches: int) -> None:
        """Anchor `batches` more batches, one transaction (and so one block) after another."""
        with httpx.Client(timeout=300) as client:
            for _ in range(batches):
                body = {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "eth_sendRawTransaction",
                    "params": [self._raw(self.batches)],
                }
                answer = client.post(rpc_url, json=body).json()
                if "error" in answer:
                    raise RuntimeError(f"anchoring failed: {answer['error']}")
                self.batches += 1
                self.nonce += 1
                if self.batches % CATCH_UP_EVERY == 0:
                    self.wait_mined()
        self.wait_mined()

    def wait_mined(self, stall_seconds: float = 60.0) -> None:
        """Wait until every batch sent is in a block (Anvil answers a send before it mines).

        Raises when nothing is mined for `stall_seconds`: on 2026-12-07 Anvil 1.7.1's automine
        stopped at 22,814 blocks with 19,627 transactions pending, until an `evm_mine`.
        """
        mined, since = -1, time.monotonic()
        while (
            now := self.w3.eth.get_transaction_count(self.account.address, "latest")
        ) < self.nonce:
            if now != mined:
                mined, since = now, time.monotonic()
            elif time.monotonic() - since > stall_seconds:
                raise RuntimeError(
                    f"Anvil mined nothing for {stall_seconds:.0f} s at nonce {now} with "
                    f"{self.nonce - now} transactions sent after it"
                )
            time.sleep(0.1)

    def _raw(self, batch: int) -> str:
        root = Web3.keccak(text=f"batch {batch}")
        data = self.contract.encode_abi(
            "anchor", args=[batch * RECORDS_PER_BATCH, RECORDS_PER_BATCH, root]
        )
        tx = {
            "to": self.contract.address,
            "data": data,
            "gas": 120_000,
            "maxFeePerGas": 50 * 10**9,
            "maxPriorityFeePerGas": 1,
            "nonce": self.nonce,
            "chainId": 31337,
            "type": 2,
            "value": 0,
        }
        return "0x" + bytes(Account.sign_transaction(tx, self.account.key).raw_transaction).hex()


def dump_seconds(rpc_url: str) -> float:
    """Wall time of one `anvil_dumpState`."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "anvil_dumpState", "params": []}
    started = time.monotonic()
    httpx.post(rpc_url, json=body, timeout=600).raise_for_status()
    return time.monotonic() - started


def checkpoint(node: LocalNode, state_path: Path, batches: int) -> tuple[Checkpoint, LocalNode]:
    """Measure at `batches` anchored batches; the restarted node to go on with."""
    assert node.saver is not None
    node.saver.stop()
    dump = dump_seconds(node.rpc_url)
    saver = StateSaver(node.rpc_url, state_path)
    saver.save_if_changed()
    rss = rss_mib(node.pid)
    started = time.monotonic()
    node.stop()
    restarted = start_anvil(port=node.port, state_path=state_path)
    restart = time.monotonic() - started
    return (
        Checkpoint(
            batches=batches,
            state_bytes=state_path.stat().st_size,
            dump_seconds=dump,
            save_seconds=saver.last_seconds,
            restart_seconds=restart,
            rss_mib=rss,
            load=" ".join(Path("/proc/loadavg").read_text().split()[:3]),
        ),
        restarted,
    )


def show(c: Checkpoint) -> None:
    """One line per checkpoint."""
    print(
        f"{c.batches:8d} batches  state {c.state_bytes / 2**20:8.1f} MiB "
        f"({c.state_bytes / c.batches:6.0f} B/batch)  dump {c.dump_seconds:7.2f} s  "
        f"save {c.save_seconds:7.2f} s (then {max(1.0, c.save_seconds / 0.05):6.0f} s pause)  "
        f"restart {c.restart_seconds:7.2f} s  anvil rss {c.rss_mib:7.1f} MiB  load {c.load}",
        flush=True,
    )


def extrapolate(a: Checkpoint, b: Checkpoint, batches: int) -> None:
    """Straight lines through the last two checkpoints, out to `batches`."""

    def line(first: float, last: float) -> float:
        slope = (last - first) / (b.batches - a.batches)
        return last + slope * (batches - b.batches)

    size = line(a.state_bytes, b.state_bytes)
    save = line(a.save_seconds, b.save_seconds)
    print(
        f"\nextrapolated to {batches:,} batches (a straight line through the last two points):\n"
        f"  state {size / 2**30:.1f} GiB, dump {line(a.dump_seconds, b.dump_seconds):.0f} s, "
        f"save {save:.0f} s (a save at most every {save / 0.05 / 60:.0f} min), restart "
        f"{line(a.restart_seconds, b.restart_seconds):.0f} s, anvil rss "
        f"{line(a.rss_mib, b.rss_mib) / 1024:.1f} GiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", default="1000,10000,25000")
    parser.add_argument("--extrapolate", type=int, default=1_000_000)
    args = parser.parse_args()
    marks = sorted(int(n) for n in args.checkpoints.split(","))

    work = Path(tempfile.mkdtemp(prefix="crm-ledger-bench-anvil-state-"))
    state_path = work / "anvil-state.json"
    node = start_anvil(port=free_port(), state_path=state_path)
    try:
        anchorer = Anchorer(node.rpc_url)
        results: list[Checkpoint] = []
        for mark in marks:
            started = time.monotonic()
            anchorer.anchor(node.rpc_url, mark - anchorer.batches)
            print(f"... {mark} batches anchored ({time.monotonic() - started:.0f} s)", flush=True)
            result, node = checkpoint(node, state_path, mark)
            results.append(result)
            show(result)
        if len(results) >= 2:
            extrapolate(results[-2], results[-1], args.extrapolate)
        print(json.dumps([r.__dict__ for r in results]))
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
