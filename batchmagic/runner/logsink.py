"""Tee the cell's stdout and stderr into the run's log, flushed in the background.

Writes go to the real stream at once (so Batch's own stdout.txt has them too) and into a
buffer of log records; a flusher thread appends the buffer to the log channel every
``interval`` seconds, and :meth:`LogSink.close` flushes what is left. A write after a quiet
``interval`` (the cell's first line, the first after a long computation) is appended at once: the
notebook sees it a flush interval sooner, and there is still at most one timed append per interval.
"""

from __future__ import annotations

import codecs
import io
import os
import sys
import threading
import time
from typing import Any, TextIO

from batchmagic.channel import Channel
from batchmagic.protocol import LOG_TAIL_LIMIT, count_lines, decode_log_records, encode_log_record

MAX_APPEND = 4 * 1024 * 1024 - 1024  # an append block holds at most 4 MiB


class LogSink:
    """The cell's log records, appended to the log channel in order, each exactly once.

    What cannot be appended (storage unreachable) stays in a backlog and goes out, in order, when
    storage answers again: up to ``memory`` bytes in memory, then in a spill file on the node's disk
    (``spill_dir``), up to ``disk`` bytes; past that, new records are dropped and counted
    (:attr:`errors`). :meth:`close` keeps trying for ``close_timeout`` seconds.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        interval: float = 0.2,
        memory: int = 8 << 20,
        disk: int = 1 << 30,
        spill_dir: str | None = None,
        close_timeout: float = 120.0,
    ) -> None:
        self._channel = channel
        self._interval = interval
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by a write after a quiet interval: flush now
        self._last_append = time.monotonic() - interval  # no append yet: the first write goes out at once
        self._thread = threading.Thread(target=self._loop, name="batchmagic-log-flusher", daemon=True)
        self._memory = bytearray()  # unsent, newer than anything in the spill file
        self._memory_limit = memory
        self._disk_limit = disk
        self._spill_dir = spill_dir
        self._spill: Any = None  # the spill file: unsent bytes from _spill_sent to its end, the oldest
        self._spill_sent = 0
        self._spill_size = 0
        self._close_timeout = close_timeout
        self._failing = False
        self.errors = 0  # lines dropped for good (the backlog was full, or storage never came back)
        self.tail = b""  # after a close that gave up: the latest records it could not store (for the result)

    def start(self) -> LogSink:
        self._thread.start()
        return self

    def add(self, stream: str, text: str | dict[str, Any]) -> None:
        if text:
            record = encode_log_record(time.time(), stream, text)
            with self._lock:
                self._pending.append(record)
            if time.monotonic() - self._last_append >= self._interval:
                self._wake.set()

    @property
    def backlog(self) -> int:
        """Bytes waiting for storage (in memory and on disk)."""
        return len(self._memory) + self._spill_size - self._spill_sent

    def flush(self) -> bool:
        """Append what is pending, oldest first; True when nothing is left waiting."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            for record in pending:
                self._keep(record)
            if pending:
                self._last_append = time.monotonic()
            while self.backlog:
                chunk = self._next_chunk()
                try:
                    self._channel.append(chunk)
                except Exception as err:  # storage is away: keep the backlog, try again on the next flush
                    if not self._failing and sys.__stderr__ is not None:
                        sys.__stderr__.write(
                            f"batchmagic runner: could not append to the log ({err}); kept until storage answers\n"
                        )
                    self._failing = True
                    return False
                self._sent(len(chunk))
            if self._failing and sys.__stderr__ is not None:
                sys.__stderr__.write("batchmagic runner: the log is appended again, nothing lost\n")
            self._failing = False
            return True

    def _keep(self, record: bytes) -> None:
        room = self._memory_limit + (self._disk_limit if self._spill_dir is not None else 0)
        if self.backlog + len(record) > room:
            self.errors += _lines(record)
            return
        self._memory += record
        if len(self._memory) > self._memory_limit and self._spill_dir is not None:
            if self._spill is None:
                import tempfile

                self._spill = tempfile.TemporaryFile(prefix=".azbatch-log-", dir=self._spill_dir)
            self._spill.seek(0, os.SEEK_END)
            self._spill.write(self._memory)
            self._spill_size += len(self._memory)
            self._memory = bytearray()

    def _next_chunk(self) -> bytes:
        if self._spill_size > self._spill_sent:
            self._spill.seek(self._spill_sent)
            return bytes(self._spill.read(min(MAX_APPEND, self._spill_size - self._spill_sent)))
        return bytes(self._memory[:MAX_APPEND])

    def _sent(self, count: int) -> None:
        if self._spill_size > self._spill_sent:
            self._spill_sent += count
            if self._spill_sent == self._spill_size:
                self._spill.close()
                self._spill, self._spill_sent, self._spill_size = None, 0, 0
        else:
            del self._memory[:count]

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.flush()

    def close(self) -> None:
        """Stop the flusher and append what is left, retrying for up to ``close_timeout`` seconds."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        deadline = time.monotonic() + self._close_timeout
        pause = 0.5
        while not self.flush():
            if time.monotonic() > deadline:
                self._give_up()
                return
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def _give_up(self) -> None:
        """Storage never came back: count the lines left (log_errors) and keep the latest of them (at
        most LOG_TAIL_LIMIT bytes, whole records) for the result, which the client shows."""
        tail, rest = bytearray(), bytearray()  # rest: an incomplete record, to count with the next chunk

        def take(chunk: bytes | bytearray) -> None:
            nonlocal tail, rest
            data = rest + chunk
            end = data.rfind(b"\n") + 1
            self.errors += _lines(bytes(data[:end]))
            rest = data[end:]
            tail = (tail + data[:end])[-LOG_TAIL_LIMIT:]

        if self._spill is not None:
            self._spill.seek(self._spill_sent)
            while chunk := self._spill.read(1 << 20):
                take(chunk)
        take(self._memory)
        if len(tail) == LOG_TAIL_LIMIT and b"\n" in tail:
            del tail[: tail.index(b"\n") + 1]  # cut at a record's start
        self.tail = bytes(tail)
        if sys.__stderr__ is not None:
            sys.__stderr__.write(
                f"batchmagic runner: {self.errors} log lines could not be stored; the result has the last of them\n"
            )


def _lines(records: bytes) -> int:
    """Lines of text in encoded log records (a last line without its newline, and a display, count as one)."""
    decoded = decode_log_records(records)[0]
    return count_lines(r.text for r in decoded if r.output is None) + sum(1 for r in decoded if r.output is not None)


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


class FdCapture:
    """Output written straight to file descriptors 1 and 2 (C extensions such as a boosting
    library's training log, subprocesses) goes through pipes into the log, and on to the real
    stream. Python-level writes bypass the pipes (:attr:`stdout`/:attr:`stderr` write to the saved
    descriptors, for :class:`TeeStream`), so they are logged once and in exact order.

    Examples
    --------
    In [1]: with FdCapture(sink) as fds:
       ...:     sys.stdout = TeeStream(fds.stdout, sink, "o")
    """

    def __init__(self, sink: LogSink) -> None:
        self._sink = sink
        self._saved: dict[int, int] = {}
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> FdCapture:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        for fd, name in ((1, "o"), (2, "e")):
            self._saved[fd] = os.dup(fd)
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            thread = threading.Thread(target=self._pump, args=(read_end, self._saved[fd], name), daemon=True)
            thread.start()
            self._threads.append(thread)
        self.stdout = io.TextIOWrapper(io.FileIO(self._saved[1], "w", closefd=False), line_buffering=True)
        self.stderr = io.TextIOWrapper(io.FileIO(self._saved[2], "w", closefd=False), line_buffering=True)
        return self

    def _pump(self, read_end: int, target: int, stream: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while chunk := os.read(read_end, 1 << 16):
                os.write(target, chunk)
                self._sink.add(stream, decoder.decode(chunk))
        finally:
            os.close(read_end)

    def __exit__(self, *exc: Any) -> None:
        self.stdout.flush()
        self.stderr.flush()
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # drops the pipe's last write end here: its reader sees the end
        for thread in self._threads:
            thread.join(timeout=5)  # a child process still holding the pipe must not hang the runner
        for saved in self._saved.values():
            os.close(saved)
