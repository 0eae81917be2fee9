"""The ledger (BATCHMAGIC_HOME/ledger.jsonl) as several processes share it: whole lines only, and a reader
that skips torn or foreign lines and names them; status, attach, teardown and ``batchmagic ls`` in real
kernels and a terminal go on past a bad line; a status read writes nothing."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from batchmagic.protocol import LEDGER_VERSION, LedgerEntry, LedgerLineError, LedgerSubmission
from batchmagic.run.ledger import Ledger
from tests.test_attach import ROOT, Kernel

FOREIGN = [
    b'{"event": "submitted", "run": "torn-run", "backend": "lo',  # a writer that died mid-line
    b"[1,2,3]",
    b'"x"',
    b'{"run": {"id": "nested"}}',
    b'{"event": "submitted", "run": "bad-pid", "pid": "x"}',
    b'{"event": "submitted", "run": "future", "schema": 99}',
]


def test_an_entry_round_trips_and_a_reader_ignores_what_it_does_not_know():
    entry = LedgerEntry(
        event="submitted",
        run="r1",
        client="c",
        time=1.5,
        backend="local",
        name="n",
        env={"A": "1"},
        sweep=True,
        submission=LedgerSubmission(vm_size="standard_d2s_v3", timeout=60, nodes=2, pool="p"),
        pid=12,
    )
    line = entry.to_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert LedgerEntry.from_line(line) == entry
    extra = json.loads(line) | {"colour": "blue"}
    extra["submission"] = extra["submission"] | {"gpu": True}
    assert LedgerEntry.from_line(json.dumps(extra)) == entry
    # A line of the first ledger (no schema, a few fields): version 1, defaults for the rest.
    old = LedgerEntry.from_line('{"time": 1, "client": "c", "event": "finished", "run": "r1", "phase": "done"}')
    assert (old.schema, old.phase, old.time, old.submission) == (1, "done", 1.0, LedgerSubmission())


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (FOREIGN[0], "not JSON"),
        (FOREIGN[1], "list, not an event"),
        (FOREIGN[2], "str, not an event"),
        (FOREIGN[3], "its run is dict, not str"),
        (b'{"time": 1}', "no event or no run"),
        (FOREIGN[4], "its pid is str, not int"),
        (FOREIGN[5], f"ledger version 99, newer than this batchmagic's {LEDGER_VERSION}"),
        (b'{"event": "submitted", "run": "r", "submission": [1]}', "submission is not an object"),
        (b'{"event": "finished", "run": "r", "time": true}', "its time is bool"),
    ],
)
def test_a_line_that_is_not_an_event_is_refused_with_a_reason(line, why):
    with pytest.raises(LedgerLineError, match=why):
        LedgerEntry.from_line(line)


def test_the_reader_skips_and_names_bad_lines_and_a_torn_line_does_not_swallow_the_next(tmp_path):
    ledger = Ledger(tmp_path, client_id="me")
    ledger.record("submitted", "first", name="first", backend="local")
    with open(ledger.path, "ab") as f:
        f.write(b"\n".join(FOREIGN[1:]) + b"\n" + FOREIGN[0])  # the torn line last, without its newline
    ledger.record("submitted", "second", name="second", backend="local")
    ledger.record("finished", "second", phase="done")
    runs = ledger.runs()
    assert list(runs) == ["first", "second"] and runs["second"].phase == "done"
    assert [number for number, _ in ledger.skipped] == [2, 3, 4, 5, 6, 7]
    note = ledger.skipped_note()
    assert note.startswith(f"skipped 6 unreadable line(s) of the ledger {ledger.path}: line 2 (a JSON list")
    assert "and 3 more" in note
    assert ledger.path.read_bytes().endswith(b"\n")


def test_a_short_write_leaves_the_ledger_whole(tmp_path, monkeypatch):
    """A full disk writes part of the line: it is cut off again, the error raised, the next line whole."""
    ledger = Ledger(tmp_path, client_id="me")
    ledger.record("submitted", "first", name="first", backend="local")
    size = ledger.path.stat().st_size
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(OSError) as raised:
        ledger.record("submitted", "lost", name="lost", backend="local")
    assert raised.value.errno == errno.ENOSPC and ledger.path.stat().st_size == size
    monkeypatch.setattr(os, "write", real_write)
    ledger.record("submitted", "second", name="second", backend="local")
    assert list(ledger.runs()) == ["first", "second"] and ledger.skipped == []


def test_a_status_read_writes_no_event_for_another_kernels_run(home):
    """Two live sessions' runs end; a third session's status reads them (polls, collects) and writes nothing."""
    from batchmagic.api import Session

    owners = [Session(), Session()]
    runs = [s.submit("import time\ntime.sleep(1)\ny = 1", {}, backend="local") for s in owners]
    for run in runs:
        run.backend.poll(run.id)  # the runs end without their sessions watching
    ledger = home / "ledger.jsonl"
    time.sleep(3)
    before = ledger.read_bytes()
    rows = Session().status()
    assert {row[0].run_id for row in rows} == {run.id for run in runs}
    assert ledger.read_bytes() == before  # no `finished` of another kernel's run
    for owner in owners:
        owner.teardown()


def test_status_attach_teardown_and_ls_go_on_past_bad_lines(tmp_path, home, monkeypatch):
    """Real kernels: a ledger with a torn line and foreign lines among real runs."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "local")
    first = Kernel(tmp_path)
    try:
        first.run("%load_ext batchmagic\n%config AzBatch.panel = 'text'")
        first.run("%%azbatch --name early\nx = 1")
        ledger = home / "ledger.jsonl"
        with open(ledger, "ab") as f:
            f.write(b"\n".join(FOREIGN[1:]) + b"\n" + FOREIGN[0])
        first.run("%%azbatch --no-wait --name late\nimport time\ntime.sleep(2)\nz = 2")
    finally:
        first.kill()
    late = [json.loads(line)["run"] for line in ledger.read_text().splitlines() if '"late"' in line][0]
    second = Kernel(tmp_path)
    try:
        second.run("%load_ext batchmagic\n%config AzBatch.panel = 'text'")
        status = second.run("%azbatch_status")
        assert "early" in status and "late" in status and "Error" not in status, status
        assert f"skipped 6 unreadable line(s) of the ledger {ledger}: line 3" in status, status
        attached = second.run(f"%azbatch_attach {late}", timeout=120)
        assert "Error" not in attached and "skipped 6" in attached, attached
        assert second.run("print(z)").strip() == "2"
        torn = second.run("%azbatch_teardown --orphans")
        assert "Error" not in torn and "skipped 6" in torn, torn
    finally:
        second.stop()
    cli = [sys.executable, "-m", "batchmagic.cli"]
    ls = subprocess.run([*cli, "ls"], capture_output=True, text=True, timeout=120)
    assert ls.returncode == 0 and "early" in ls.stdout and late in ls.stdout, ls.stdout + ls.stderr
    assert f"warning: skipped 6 unreadable line(s) of the ledger {ledger}" in ls.stderr
    assert "Traceback" not in ls.stderr
