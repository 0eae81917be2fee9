"""The runner's data transfers: inputs into the working directory before the cell, outputs after it.

Inputs arrive as a list of files, each with a URL the client signed for it alone (a read SAS on one
blob, or a ``file://`` path locally), downloaded in parallel ranged requests. Outputs are the files
of the working directory matching the ``--output`` globs, uploaded under the run's ``outputs/``
prefix, also when the cell failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from batchmagic.channel import child_url, open_channel
from batchmagic.protocol import DEFAULT_INPUT_CONCURRENCY, InputFile, OutputTarget, Progress, sha256_file

__all__ = ["fetch_inputs", "upload_outputs"]

Report = Callable[[str], None]


def _inside(root: Path, relative: str) -> Path:
    target = (root / relative).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise ValueError(f"input destination {relative!r} is outside the working directory")
    return target


def fetch_inputs(
    files: Sequence[InputFile],
    cwd: Path,
    *,
    concurrency: int = DEFAULT_INPUT_CONCURRENCY,
    progress: Report | None = None,
) -> dict[str, float]:
    """Download every input file to ``cwd / file["path"]``; report bytes and throughput as it goes.

    Files are fetched one after another, each in ``concurrency`` parallel ranges (small files
    several at once), which keeps every connection busy whatever the mix of sizes.
    """
    total = sum(f.size for f in files)
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
        progress(Progress("inputs", done=done, total=total, mb_per_s=done / seconds / 1e6).to_json())

    def one(item: InputFile) -> None:
        nonlocal done
        target = _inside(cwd, item.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = item.size
        small = size <= 8 << 20
        open_channel(item.url).download_to(target, size=size, concurrency=1 if small else concurrency)
        if item.sha256 and sha256_file(target) != item.sha256:
            raise ValueError(f"input {item.path} does not match its content hash: it was altered in the store")
        with lock:
            done += size
        report()

    from concurrent.futures import ThreadPoolExecutor  # in a runner that has files to move only (with logging: 3 ms)

    small = [f for f in files if f.size <= 8 << 20]
    large = [f for f in files if f.size > 8 << 20]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, small))
    for item in large:
        one(item)
    report(final=True)
    seconds = max(time.monotonic() - started, 1e-6)
    return {"bytes": float(done), "seconds": seconds}


def upload_outputs(
    outputs: OutputTarget, cwd: Path, *, skip: Path | None = None
) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    """Upload the files matching ``outputs.patterns`` under ``outputs.prefix``.

    Returns the files uploaded, ``(relative path, size)``, and the patterns that matched nothing.
    """
    matched: dict[str, Path] = {}
    unmatched = []
    for pattern in outputs.patterns:
        hits = [p for p in sorted(cwd.glob(pattern)) if p.is_file() and (skip is None or skip not in p.parents)]
        if not hits:
            unmatched.append(pattern)
        for path in hits:
            matched[path.relative_to(cwd).as_posix()] = path

    def one(item: tuple[str, Path]) -> tuple[str, int]:
        relative, path = item
        open_channel(child_url(outputs.url, outputs.prefix + relative)).upload_file(path)
        return relative, path.stat().st_size

    from concurrent.futures import ThreadPoolExecutor  # as fetch_inputs'

    with ThreadPoolExecutor(max_workers=8) as pool:
        files = tuple(pool.map(one, matched.items()))
    return files, tuple(unmatched)
