"""Tee the cell's stdout and stderr into the run's log, flushed in the background.

Writes go to the real stream at once (so Batch's own stdout.txt has them too) and into a
buffer of log records; a flusher thread appends the buffer to the log channel every
``interval`` seconds, and :meth:`LogSink.close` flushes what is left.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from typing import Any, TextIO

from batchmagic.storage import Channel, encode_log_record

MAX_APPEND = 4 * 1024 * 1024 - 1024  # an append block holds at most 4 MiB


class LogSink:
    def __init__(self, channel: Channel, *, interval: float = 0.2) -> None:
        self._channel = channel
        self._interval = interval
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batchmagic-log-flusher", daemon=True)
        self.errors = 0

    def start(self) -> LogSink:
        self._thread.start()
        return self

    def add(self, stream: str, text: str | dict[str, Any]) -> None:
        if text:
            record = encode_log_record(time.time(), stream, text)
            with self._lock:
                self._pending.append(record)

    def flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            data = b"".join(pending)
            for start in range(0, len(data), MAX_APPEND):
                try:
                    self._channel.append(data[start : start + MAX_APPEND])
                except Exception as err:  # a lost log chunk must not kill the cell
                    self.errors += 1
                    if sys.__stderr__ is not None:  # None only when the process has no stderr at all
                        sys.__stderr__.write(f"batchmagic runner: could not append to the log: {err}\n")

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()


class TeeStream(io.TextIOBase):
    """A text stream that writes through to ``target`` and records each write in the sink."""

    def __init__(self, target: TextIO, sink: LogSink, stream: str) -> None:
        self._target = target
        self._sink = sink
        self._stream = stream

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._target.fileno()

    def write(self, text: str) -> int:
        # Log first: a SIGTERM raised between the two calls must not leave the log short of
        # what the terminal already showed.
        self._sink.add(self._stream, text)
        self._target.write(text)
        return len(text)

    def flush(self) -> None:
        self._target.flush()
