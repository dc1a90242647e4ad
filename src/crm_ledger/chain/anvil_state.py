"""Anvil's state file (`--state`), made safe to restart from, before each start.

Exports: `prepare_state_file`, `keep_last_good`, `block_hash`.

Two things can be wrong with the file Anvil left behind:

- **Torn**: Anvil writes the file in place, so a SIGKILL in the middle of a write leaves it
  truncated. `keep_last_good` keeps a copy of every file Anvil loaded successfully next to it
  (`<name>.last-good`), and a file that is not JSON is set aside and replaced by that copy.
  Falling back to an older state is a chain rollback, which the anchorer handles (it re-anchors
  from the journal).
- **Stray blocks**: every Anvil start builds a genesis block of its own (stamped with the time of
  the start) before it loads the file, and Anvil 1.7 keeps that block in its block store beside
  the loaded one, so each restart's dump holds one more block 0. On the next load Anvil maps
  number 0 to whichever of them its (unordered) block list names last: the chain comes back with
  the same blocks and accounts but another genesis hash, which the anchorer must take for a reset
  chain and halts on. `prepare_state_file` keeps, at every height that holds more than one block,
  only the block the next block names as its parent (the genesis the ledger was deployed on), so
  the genesis hash survives any number of restarts. A height it cannot decide (the top one, or
  blocks whose hash it cannot recompute) is left as it is, with a warning.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import rlp  # type: ignore[import-untyped]
from eth_utils.crypto import keccak

__all__ = ["block_hash", "keep_last_good", "prepare_state_file"]

log = logging.getLogger(__name__)

#: Header fields that RLP encodes as integers; every other field is a byte string.
_QUANTITIES = frozenset(
    {
        "difficulty",
        "number",
        "gasLimit",
        "gasUsed",
        "timestamp",
        "baseFeePerGas",
        "blobGasUsed",
        "excessBlobGas",
    }
)


def prepare_state_file(state_path: Path) -> None:
    """Make `state_path` fit to load: a torn file replaced, stray blocks dropped (see above).

    Call it only while no Anvil runs on the file. A missing file is left missing.
    """
    if not state_path.exists():
        return
    state = _read_json(state_path)
    if state is None:
        _restore_last_good(state_path)
        state = _read_json(state_path)
    if isinstance(state, dict) and _drop_stray_blocks(state):
        _write_atomically(state_path, json.dumps(state).encode())


def keep_last_good(state_path: Path) -> None:
    """Keep a copy of the file Anvil just loaded: the one to fall back on after a torn write."""
    if state_path.exists():
        _copy_atomically(state_path, _last_good(state_path))


def block_hash(header: dict[str, str]) -> bytes:
    """The hash of a block header as Anvil's state file spells it (JSON-RPC names, hex values).

    The fields are RLP-encoded in the order the file lists them, which is the header's order.
    """
    fields = [
        int(value, 16) if name in _QUANTITIES else bytes.fromhex(value.removeprefix("0x"))
        for name, value in header.items()
    ]
    digest: bytes = keccak(rlp.encode(fields))
    return digest


def _drop_stray_blocks(state: dict[str, Any]) -> bool:
    """Keep one block per height in `state["blocks"]`; whether any block was dropped."""
    blocks = state.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        return False
    by_height: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
    for block in blocks:
        by_height[int(block["header"]["number"], 16)].append(block)
    stray: list[int] = []
    for height in sorted(by_height, reverse=True):
        candidates = by_height[height]
        if len(candidates) == 1:
            continue
        kept = _canonical(height, candidates, by_height.get(height + 1))
        if kept is None:
            continue
        by_height[height] = [kept]
        stray += [id(block) for block in candidates if block is not kept]
    if not stray:
        return False
    state["blocks"] = [block for block in blocks if id(block) not in stray]
    log.info("Anvil state: dropped %d stray blocks (genesis blocks of earlier starts)", len(stray))
    return True


def _canonical(
    height: int, candidates: list[dict[str, Any]], children: list[dict[str, Any]] | None
) -> dict[str, Any] | None:
    """The block among `candidates` that the block above names as its parent, if decidable."""
    if children is None and height == 0:
        # Nothing was ever mined on any of them: keep the first start's genesis, so that
        # restarts stay on one chain.
        return min(candidates, key=lambda block: int(block["header"]["timestamp"], 16))
    if children is None or len(children) != 1:
        log.warning(
            "Anvil state: %d blocks at height %d, none to tell them apart", len(candidates), height
        )
        return None
    parent = bytes.fromhex(children[0]["header"]["parentHash"].removeprefix("0x"))
    for block in candidates:
        try:
            if block_hash(block["header"]) == parent:
                return block
        except (KeyError, ValueError, TypeError, AttributeError):
            break
    log.warning(
        "Anvil state: %d blocks at height %d and none hashes to the parent of block %d: left as "
        "they are",
        len(candidates),
        height,
        height + 1,
    )
    return None


def _read_json(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _restore_last_good(state_path: Path) -> None:
    """Replace a torn state file (SIGKILL mid-write) with the last copy Anvil loaded."""
    aside = state_path.with_name(f"{state_path.name}.unreadable-{int(time.time())}")
    state_path.replace(aside)
    fallback = _last_good(state_path)
    if fallback.exists():
        _copy_atomically(fallback, state_path)
        log.warning(
            "Anvil state %s was unreadable (kept as %s); restarting from the last good copy: "
            "the chain rolls back to it and the anchorer re-anchors what is missing",
            state_path,
            aside,
        )
    else:
        log.warning(
            "Anvil state %s was unreadable (kept as %s) and no earlier copy exists: starting "
            "an empty chain",
            state_path,
            aside,
        )


def _last_good(state_path: Path) -> Path:
    return state_path.with_name(f"{state_path.name}.last-good")


def _copy_atomically(source: Path, target: Path) -> None:
    partial = target.with_name(f"{target.name}.partial")
    shutil.copyfile(source, partial)
    partial.replace(target)


def _write_atomically(target: Path, content: bytes) -> None:
    partial = target.with_name(f"{target.name}.partial")
    partial.write_bytes(content)
    partial.replace(target)
