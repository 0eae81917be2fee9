"""The runner's data transfers: inputs into the working directory before the cell, outputs after it.

Inputs arrive as a list of files, each with a URL the client signed for it alone (a read SAS on one
blob, or a ``file://`` path locally), downloaded in parallel ranged requests. Outputs are the files
of the working directory matching the ``--output`` globs, uploaded under the run's ``outputs/``
prefix, also when the cell failed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from batchmagic.storage import child_url, open_channel

__all__ = ["fetch_inputs", "upload_outputs"]

Progress = Callable[[str], None]


def _inside(root: Path, relative: str) -> Path:
    target = (root / relative).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise ValueError(f"input destination {relative!r} is outside the working directory")
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_inputs(
    files: list[dict[str, Any]], cwd: Path, *, concurrency: int = 16, progress: Progress | None = None
) -> dict[str, float]:
    """Download every input file to ``cwd / file["path"]``; report bytes and throughput as it goes.

    Files are fetched one after another, each in ``concurrency`` parallel ranges (small files
    several at once), which keeps every connection busy whatever the mix of sizes.
    """
    total = sum(int(f.get("size", 0)) for f in files)
    done = 0
    lock = threading.Lock()
    started = time.monotonic()
    last_report = 0.0

    def report(final: bool = False) -> None:
        nonlocal last_report
        now = time.monotonic()
        if progress is None or (not final and now - last_report < 1.0):
            return
        last_report = now
        seconds = max(now - started, 1e-6)
        progress(json.dumps({"phase": "inputs", "bytes": done, "total": total, "mb_per_s": done / seconds / 1e6}))

    def one(item: dict[str, Any]) -> None:
        nonlocal done
        target = _inside(cwd, item["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        size = int(item.get("size", 0))
        small = size <= 8 << 20
        open_channel(item["url"]).download_to(target, size=size, concurrency=1 if small else concurrency)
        if item.get("sha256") and _sha256(target) != item["sha256"]:
            raise ValueError(f"input {item['path']} does not match its content hash: it was altered in the store")
        with lock:
            done += size
        report()

    small = [f for f in files if int(f.get("size", 0)) <= 8 << 20]
    large = [f for f in files if int(f.get("size", 0)) > 8 << 20]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, small))
    for item in large:
        one(item)
    report(final=True)
    seconds = max(time.monotonic() - started, 1e-6)
    return {"bytes": float(done), "seconds": seconds}


def upload_outputs(outputs: dict[str, Any], cwd: Path, *, skip: Path | None = None) -> dict[str, Any]:
    """Upload the files matching ``outputs["patterns"]`` under ``outputs["prefix"]``.

    Returns ``{"files": [[relative path, size], ...], "unmatched": [patterns that matched nothing]}``.
    """
    matched: dict[str, Path] = {}
    unmatched = []
    for pattern in outputs.get("patterns", []):
        hits = [p for p in sorted(cwd.glob(pattern)) if p.is_file() and (skip is None or skip not in p.parents)]
        if not hits:
            unmatched.append(pattern)
        for path in hits:
            matched[path.relative_to(cwd).as_posix()] = path

    def one(item: tuple[str, Path]) -> list[Any]:
        relative, path = item
        open_channel(child_url(outputs["url"], outputs["prefix"] + relative)).upload_file(path)
        return [relative, path.stat().st_size]

    with ThreadPoolExecutor(max_workers=8) as pool:
        files = list(pool.map(one, matched.items()))
    return {"files": files, "unmatched": unmatched}
