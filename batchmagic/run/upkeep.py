"""The run store's upkeep: what it holds, by kind, and freeing what no live run needs.

``batchmagic store`` shows the sizes; ``batchmagic store --prune`` frees; after each run the local
store is trimmed to ``AzBatch.store_limit``, oldest first. What may go:

- a run's data (``runs/<run-id>/``: its bundle, specs, logs, results, record and files) once the
  ledger says it finished or was released;
- an input or object (``inputs/sha256/...``, ``objects/sha256/...``) that no live run's spec names.

What is younger than :data:`GRACE` seconds stays whatever the ledger says: a run being submitted in
another kernel has stored its inputs but not yet written its spec, nor its ledger line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from batchmagic.protocol import Layout
from batchmagic.run.ledger import Ledger
from batchmagic.storage import BlobStore, LocalStore, Store

__all__ = ["GRACE", "KINDS", "Usage", "kind_of", "usage", "Prunable", "prunable", "prune", "trim"]

GRACE = 3600.0
_CONTENT = re.compile(r"(?:inputs|objects)/sha256/[0-9a-f]{64}")
_RUN_TIME = re.compile(r"-(\d{8}-\d{6})-[0-9a-f]{6}$")

#: The kinds ``usage`` counts, in the order they are shown.
KINDS = ("inputs", "objects", "bundles", "specs", "logs", "results", "records", "files", "other")


def kind_of(key: str) -> str:
    """Which kind of data a store key holds (see :class:`batchmagic.protocol.Layout`)."""
    if key.startswith("inputs/"):
        return "inputs"
    if key.startswith("objects/"):
        return "objects"
    if not key.startswith(Layout.RUNS):
        return "other"
    parts = key.split("/")
    if len(parts) == 3:
        return {"bundle": "bundles", "outputs.ipynb": "records"}.get(parts[2], "other")
    if "outputs" in parts[3:-1] or parts[2] == "batch":
        return "files"
    return {"spec.json": "specs", "output.log": "logs", "result": "results"}.get(parts[-1], "other")


@dataclass
class Usage:
    """Bytes and files per kind, and how many runs have data."""

    sizes: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    runs: int = 0

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


def usage(keys: Iterable[tuple[str, int]]) -> Usage:
    """What ``keys`` (a store's listing) hold, by kind."""
    out = Usage()
    runs = set()
    for key, size in keys:
        kind = kind_of(key)
        out.sizes[kind] = out.sizes.get(kind, 0) + size
        out.counts[kind] = out.counts.get(kind, 0) + 1
        if key.startswith(Layout.RUNS):
            runs.add(key.split("/")[1])
    out.runs = len(runs)
    return out


@dataclass
class Prunable:
    """What may go: whole runs (run id -> bytes, oldest first) and content keys (key -> bytes)."""

    runs: dict[str, int] = field(default_factory=dict)
    content: dict[str, int] = field(default_factory=dict)
    kept_runs: int = 0

    @property
    def total(self) -> int:
        return sum(self.runs.values()) + sum(self.content.values())


def run_time(run_id: str) -> float:
    """When a run was made, from its id (``<name>-YYYYMMDD-HHMMSS-xxxxxx``, UTC); 0 when not of that form."""
    from datetime import UTC, datetime

    match = _RUN_TIME.search(run_id)
    if not match:
        return 0.0
    return datetime.strptime(match.group(1), "%Y%m%d-%H%M%S").replace(tzinfo=UTC).timestamp()


def prunable(
    keys: Iterable[tuple[str, int]],
    live: set[str],
    needed: set[str],
    ages: Mapping[str, float],
    *,
    now: float,
    grace: float = GRACE,
) -> Prunable:
    """Decide what may go (pure): the data of runs not ``live``, the content keys no live run
    ``needed``; nothing younger than ``grace`` seconds (``ages``: key -> modification time, where
    known; a run's time comes from its id)."""
    out = Prunable()
    runs: dict[str, int] = {}
    for key, size in keys:
        if key.startswith(Layout.RUNS):
            run_id = key.split("/")[1]
            runs[run_id] = runs.get(run_id, 0) + size
        elif _CONTENT.fullmatch(key) and key not in needed and now - ages.get(key, 0.0) > grace:
            out.content[key] = size
    for run_id in sorted(runs, key=run_time):
        if run_id in live or now - run_time(run_id) <= grace:
            out.kept_runs += 1
        else:
            out.runs[run_id] = runs[run_id]
    return out


def _live(ledger: Ledger) -> set[str]:
    return {rid for rid, run in ledger.runs().items() if not (run.finished or run.released)}


def _needed(store: Store, live: set[str]) -> set[str]:
    """The content keys the specs of live runs name (their inputs' and objects' URLs hold the key)."""
    needed: set[str] = set()
    for run_id in live:
        for key, _size in store.list_keys(Layout.run_prefix(run_id)):
            if Layout.spec_task(run_id, key):
                needed.update(_CONTENT.findall(store.get_bytes(key).decode("utf-8", "replace")))
    return needed


def _ages(store: Store, keys: Iterable[tuple[str, int]]) -> dict[str, float]:
    if not isinstance(store, LocalStore):
        return {}  # Blob Storage: content keys are judged by the ledger alone
    ages = {}
    for key, _size in keys:
        if _CONTENT.fullmatch(key):
            try:
                ages[key] = store.path(key).stat().st_mtime
            except OSError:
                continue
    return ages


def _survey(store: Store, ledger: Ledger, grace: float | None) -> tuple[list[tuple[str, int]], Prunable]:
    keys = store.list_keys("")
    live = _live(ledger)
    wait = GRACE if grace is None else grace
    return keys, prunable(keys, live, _needed(store, live), _ages(store, keys), now=time.time(), grace=wait)


def prune(store: Store, ledger: Ledger, *, grace: float | None = None) -> Prunable:
    """Free what no live run needs and is older than ``grace`` seconds (default :data:`GRACE`);
    return what went."""
    _keys, gone = _survey(store, ledger, grace)
    _delete(store, gone.runs, gone.content)
    return gone


def trim(store: Store, ledger: Ledger, limit: int, *, grace: float | None = None) -> Prunable:
    """Free the oldest of what no live run needs until the store holds at most ``limit`` bytes
    (0: no limit); return what went."""
    keys, candidates = _survey(store, ledger, grace)
    over = sum(size for _key, size in keys) - limit
    gone = Prunable(kept_runs=candidates.kept_runs)
    if limit <= 0 or over <= 0:
        return gone
    ages = _ages(store, keys)
    oldest = sorted(
        [(run_time(rid), "run", rid, size) for rid, size in candidates.runs.items()]
        + [(ages.get(key, 0.0), "content", key, size) for key, size in candidates.content.items()]
    )
    for _when, what, name, size in oldest:
        if over <= 0:
            break
        (gone.runs if what == "run" else gone.content)[name] = size
        over -= size
    _delete(store, gone.runs, gone.content)
    return gone


def _delete(store: Store, runs: Iterable[str], content: Iterable[str]) -> None:
    for run_id in runs:
        store.delete_prefix(Layout.run_prefix(run_id))
        if isinstance(store, BlobStore):  # its files and Batch's stdout/stderr: the run's own container
            store.outbox(run_id).delete_container()
    for key in content:
        store.delete_prefix(key)
