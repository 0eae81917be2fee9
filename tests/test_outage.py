"""Logs survive a storage outage: the runner keeps what it could not append (in memory, then on disk)
and appends it, in order, when storage answers again; the client sees every line exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from batchmagic.channel import BlobChannel, Channel
from batchmagic.errors import RunFailed
from batchmagic.protocol import decode_log_records
from batchmagic.runner.logsink import LogSink
from tests.support.azurite import start_azurite
from tests.support.emulator import start_emulator, wait_for
from tests.support.settings import use_azure
from tests.test_attach import ROOT


class Flaky(Channel):
    """A log channel whose storage is away while ``down`` is set."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.down = threading.Event()
        self.failures = 0

    def read(self) -> bytes:
        return bytes(self.data)

    def write(self, data: bytes) -> None:
        self.data[:] = data

    def append(self, data: bytes) -> None:
        if self.down.is_set():
            self.failures += 1
            raise OSError("storage is away")
        self.data += data


def lines_of(data: bytes) -> list[str]:
    records, _ = decode_log_records(data)
    return [r.text for r in records]


def test_the_backlog_goes_out_in_order_after_an_outage(tmp_path):
    channel = Flaky()
    sink = LogSink(channel, interval=0.01, memory=2000, spill_dir=str(tmp_path), close_timeout=30)
    sink.start()
    for i in range(50):
        sink.add("o", f"before {i}\n")
    wait_for(lambda: len(lines_of(channel.read())) == 50)
    channel.down.set()
    for i in range(300):  # ~12 KB: over the 2 KB memory limit, so most of it waits on disk
        sink.add("o", f"during {i}\n")
    wait_for(lambda: channel.failures > 3)
    assert sink.backlog > 2000  # most of it in the spill file (an unlinked temporary file)
    channel.down.clear()
    for i in range(20):
        sink.add("o", f"after {i}\n")
    sink.close()
    expected = [f"before {i}\n" for i in range(50)] + [f"during {i}\n" for i in range(300)]
    expected += [f"after {i}\n" for i in range(20)]
    assert lines_of(channel.read()) == expected
    assert sink.errors == 0 and sink.backlog == 0


def test_close_waits_for_storage_to_come_back(tmp_path):
    channel = Flaky()
    channel.down.set()
    sink = LogSink(channel, interval=0.01, spill_dir=str(tmp_path), close_timeout=30)
    sink.start()
    sink.add("o", "the last line\n")
    threading.Timer(1.5, channel.down.clear).start()
    sink.close()
    assert lines_of(channel.read()) == ["the last line\n"] and sink.errors == 0


def test_a_full_backlog_drops_and_counts(tmp_path):
    channel = Flaky()
    channel.down.set()
    sink = LogSink(channel, interval=60, memory=1000, disk=0, spill_dir=None, close_timeout=0)
    for i in range(100):
        sink.add("o", f"line {i}\n")
    sink.flush()
    assert sink.backlog <= 1000 and sink.errors > 0


def test_an_append_whose_answer_was_lost_is_not_repeated(tmp_path, monkeypatch):
    """A retried append block whose first attempt took (its answer lost) is recognised by the blob's length."""
    channel = BlobChannel("http://127.0.0.1:1/c/log?sig=x")
    blob = bytearray()
    calls = []

    def request(method, data=None, *, query="", **headers):
        calls.append((method, query, headers))
        if method == "PUT" and query == "comp=appendblock":
            position = int(headers["x_ms_blob_condition_appendpos"])
            if position != len(blob):
                from batchmagic.channel import BlobRequestError

                raise BlobRequestError("PUT", 412, channel.url)
            blob.extend(data)
            if len(calls) == 2:  # the first block: applied, then the connection drops
                raise OSError("connection reset by peer")
        return _Closing()

    monkeypatch.setattr(channel, "_request", request)
    monkeypatch.setattr(channel, "size", lambda: len(blob))
    try:
        channel.append(b"first\n")
    except OSError:
        channel.append(b"first\n")  # what LogSink does: the same bytes again
    channel.append(b"second\n")
    assert bytes(blob) == b"first\nsecond\n"


class _Closing:
    def close(self) -> None:
        pass


def test_logs_survive_an_azurite_outage(tmp_path, monkeypatch, home):
    """Azurite stopped for 10 s while the cell prints: every line arrives once, in order."""
    from batchmagic.api import Session

    location = tmp_path / "azurite"
    streamed: list[str] = []
    with start_azurite(location) as first:
        port = first.port
        with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
            use_azure(monkeypatch, emu, first, prefix=f"outage-{uuid.uuid4().hex[:4]}")
            session = Session()
            run = session.submit(
                "import time\nfor i in range(40):\n    print('line', i, flush=True)\n    time.sleep(0.5)\ndone = True",
                {},
                backend="azure",
                name="outage",
                on_update=lambda state, records: streamed.extend(r.text for r in records),
            )
            run.watch_in_background()
            try:
                wait_for(lambda: "line 5\n" in "".join(streamed), timeout=90)
                first.process.terminate()
                first.process.wait(10)
                time.sleep(10)
                with start_azurite(location, port=port):
                    wait_for(lambda: run.done, timeout=240)
                    assert run.status == "done", run.error
                    expected = [f"line {i}" for i in range(40)]
                    assert [line for line in run.logs().splitlines() if line.startswith("line ")] == expected
                    assert [line for line in "".join(streamed).splitlines() if line.startswith("line ")] == expected
                    assert run.outputs["done"] is True
            finally:
                session.teardown()


def test_a_run_survives_an_emulator_restart(tmp_path, monkeypatch, home):
    """The Batch emulator restarted mid-run with --state: the run goes on (its task requeued, as Batch
    does when a node restarts: the runner says so in the log) and its result comes back."""
    from batchmagic.api import Session
    from tests.support.azurite import start_azurite

    state = tmp_path / "state"
    with start_azurite(tmp_path / "azurite") as az:
        with start_emulator(tmp_path / "first", state_dir=state) as first:
            port = int(first.endpoint.rsplit(":", 1)[1])
            use_azure(monkeypatch, first, az, prefix=f"restart-{uuid.uuid4().hex[:4]}")
            session = Session()
            run = session.submit(
                "import time\nfor i in range(10):\n    print('line', i, flush=True)\n    time.sleep(0.5)\nanswer = 42",
                {},
                backend="azure",
                name="restart",
            )
            run.watch_in_background()
            wait_for(lambda: "line 2" in run.logs(), timeout=90)
        try:
            with start_emulator(tmp_path / "second", state_dir=state, port=port):
                wait_for(lambda: run.done, timeout=180)
                assert run.status == "done", run.error
                assert run.outputs["answer"] == 42
                text = run.logs()
                last = text.rsplit("its output starts over", 1)[-1]
                assert [line for line in last.splitlines() if line.startswith("line ")] == [
                    f"line {i}" for i in range(10)
                ]
        finally:
            session.teardown()


def test_batchmagic_logs_waits_out_an_outage_with_one_line(tmp_path, monkeypatch, home):
    """Azurite down when ``batchmagic logs RUN`` starts: one line says so, the log follows once it is back."""
    import subprocess
    import sys

    from batchmagic.api import Session

    location = tmp_path / "azurite"
    with start_azurite(location) as first:
        port = first.port
        with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
            use_azure(monkeypatch, emu, first, prefix=f"cli-{uuid.uuid4().hex[:4]}")
            # 2 s of the storage client's retries a request (the default's take 17 s): the CLI's own patience
            # is on trial.
            monkeypatch.setenv("BATCHMAGIC_STORAGE_PATIENCE", "2s")
            session = Session()
            run = session.submit("for i in range(5):\n    print('line', i)\nx = 1", {}, backend="azure", name="cli")
            try:
                run.wait(timeout=120)
                first.process.terminate()
                first.process.wait(10)
                cli = subprocess.Popen(
                    [sys.executable, "-m", "batchmagic.cli", "logs", run.id],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                waited = time.monotonic()
                with pytest.raises(RunFailed, match="does not answer") as raised:  # the API: one line too
                    run.logs()
                assert "\n" not in str(raised.value)
                time.sleep(max(0.0, 12 - (time.monotonic() - waited)))  # past a few of the CLI's tries
                with start_azurite(location, port=port):
                    out, err = cli.communicate(timeout=120)
                    assert cli.returncode == 0, err
                    assert [line for line in out.splitlines() if line.startswith("line ")] == [
                        f"line {i}" for i in range(5)
                    ]
                    said = [line for line in err.splitlines() if line.strip()]
                    assert len(said) == 1 and "storage does not answer" in said[0], err
                    assert "Traceback" not in err
            finally:
                with start_azurite(location, port=port) if first.process.poll() is not None else _nothing():
                    session.teardown()


@pytest.mark.timeout(600)  # it waits up to 360 s for the run to end: past pytest's 300 s default
def test_a_task_that_dies_while_storage_is_down_fails_the_run_in_one_line(tmp_path, monkeypatch, home):
    """The task's process dies while Azurite is down: the run ends ``failed`` with one line once it has
    tried to read the result long enough, never stuck in ``collecting``."""
    from batchmagic.api import Session
    from batchmagic.run.run import Run

    location = tmp_path / "azurite"
    streamed: list[str] = []
    with start_azurite(location) as first:
        port = first.port
        with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
            use_azure(monkeypatch, emu, first, prefix=f"dies-{uuid.uuid4().hex[:4]}")
            monkeypatch.setattr(Run, "collect_patience", 10.0)  # the default is minutes
            monkeypatch.setenv("BATCHMAGIC_STORAGE_PATIENCE", "2s")  # a read's retries: the default's take 17 s
            session = Session()
            run = session.submit(
                "import os, time\nprint('started', flush=True)\ntime.sleep(3)\nos._exit(9)",
                {},
                backend="azure",
                name="dies",
                on_update=lambda state, records: streamed.extend(r.text for r in records),
            )
            run.watch_in_background()
            try:
                wait_for(lambda: "started" in "".join(streamed), timeout=90)
                first.process.terminate()
                first.process.wait(10)
                # Each read of a stopped Azurite takes the storage client's own retries (about 2 s here), so a
                # tick takes several seconds: the run ends on the first tick past its patience.
                wait_for(lambda: run.done, timeout=360)
                assert run.status == "failed"
                message = str(run.error)
                assert "\n" not in message and "its result could not be read" in message, message
            finally:
                with start_azurite(location, port=port):
                    session.teardown()


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def test_a_log_storage_never_takes_is_counted_and_its_tail_kept(tmp_path):
    channel = Flaky()
    channel.down.set()
    sink = LogSink(channel, interval=60, memory=300, spill_dir=str(tmp_path), close_timeout=0.2)
    for i in range(100):
        sink.add("o", f"line {i}\n")
    sink.add("e", "two\nlines\n")
    sink.close()
    assert sink.errors == 102
    assert lines_of(sink.tail)[-3:] == ["line 98\n", "line 99\n", "two\nlines\n"]


def test_the_last_lines_of_a_log_storage_would_not_take_reach_the_user(tmp_path, monkeypatch, home):
    """Azurite away as the cell prints its last lines and ends, for longer than the runner waits: the
    result carries them; the cell shows them, says how many could not be stored, and the record keeps them."""
    import warnings

    from batchmagic.api import Session
    from batchmagic.run.run import Run

    location = tmp_path / "azurite"
    streamed: list[str] = []
    with start_azurite(location) as first:
        port = first.port
        with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
            use_azure(monkeypatch, emu, first, prefix=f"tail-{uuid.uuid4().hex[:4]}")
            monkeypatch.setattr(Run, "log_patience", 3.0)  # the default is 2 minutes
            session = Session()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                run = session.submit(
                    "import time\nprint('first', flush=True)\ntime.sleep(4)\n"
                    "for i in range(3):\n    print('last', i)\ndone = True",
                    {},
                    backend="azure",
                    name="tail",
                    on_update=lambda state, records: streamed.extend(r.text for r in records),
                )
                run.watch_in_background()
                try:
                    wait_for(lambda: "first" in "".join(streamed), timeout=90)
                    first.process.terminate()
                    first.process.wait(10)
                    time.sleep(12)  # the cell ends; its runner gives up on the log after 3 s
                    with start_azurite(location, port=port):
                        wait_for(lambda: run.done, timeout=180)
                        assert run.status == "done", run.error
                        shown = [line for line in "".join(streamed).splitlines() if line.startswith("last")]
                        assert shown == ["last 0", "last 1", "last 2"]
                        said = [w for w in [*map(str, (c.message for c in caught)), *run.warnings] if "stored" in w]
                        assert said and said[0].startswith("3 lines of run tail's log could not be stored"), said
                        record = json.loads(run.store.get_bytes(run.record_key))
                        text = "".join(o.get("text", "") for o in record["cells"][0]["outputs"])
                        assert "last 2\n" in text
                finally:
                    with start_azurite(location, port=port) if first.process.poll() is not None else _nothing():
                        session.teardown()
