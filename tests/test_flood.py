"""A flood of output: the notebook shows a capped part of it with a note, collecting is linear in it, and
the kernel's memory stays bounded; the whole log and the record keep every line. A real kernel, the local
backend, a million lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

from batchmagic.notebook.logcap import LogCap
from batchmagic.run.ipynb import outputs_of
from batchmagic.run.state import LogRecord, Phase, RunState
from tests.test_attach import ROOT, Kernel

LINES = 1_000_000


def _state() -> RunState:
    return RunState(run_id="r-1", name="flood", backend="local", vm_size="", phase=Phase.RUNNING, phases=(), started=0)


def test_the_cap_shows_the_first_lines_a_note_and_at_the_end_the_last_ones():
    cap = LogCap(100)  # 50 first, 50 last
    shown = cap.feed([LogRecord(float(i), "stdout", f"{i}\n{i}b\n") for i in range(100)], _state())
    text = "".join(r.text for r in shown)
    assert text.startswith("0\n0b\n1\n") and "24b\n" in text and "\n25\n" not in text
    assert "flood printed more than 50 lines" in text and "_azbatch.logs()" in text and "batchmagic logs r-1" in text
    assert cap.feed([LogRecord(200.0, "stderr", "late\n")], _state()) == []
    end = "".join(r.text for r in cap.end(_state()))
    assert end.startswith("[azbatch] ... 101 lines not shown; its last 50 lines:\n") and end.endswith("99b\nlate\n")
    assert cap.end(_state()) == []  # once
    assert LogCap(0).feed([LogRecord(0.0, "stdout", "x\n" * 50_000)], _state())[0].text.count("\n") == 50_000


def test_a_stream_is_joined_in_linear_time():
    records = (LogRecord(float(i), "stdout", f"line {i}\n") for i in range(LINES))
    (out,) = outputs_of(records)
    assert out["text"].count("\n") == LINES and out["text"].endswith(f"line {LINES - 1}\n")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_million_lines_in_a_real_kernel(tmp_path, home, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "local")
    kernel = Kernel(tmp_path)
    try:
        kernel.run("%load_ext batchmagic\n%config AzBatch.panel = 'text'\nimport gc; gc.collect()")
        pid = int(kernel.run("import os; print(os.getpid())").strip())
        before = _rss_mb(pid)
        shown = kernel.run(
            f"%%azbatch --name flood\nimport sys\nfor i in range({LINES}):\n    sys.stdout.write(f'line {{i}}\\n')\n"
            "done = True",
            timeout=600,
        )
        grown = _rss_mb(pid) - before
        lines = shown.splitlines()
        assert "line 0" in lines and "line 8999" in lines and "line 9000" not in lines, shown[-3000:]
        assert "line 998999" not in lines and "line 999000" in lines and lines[-1] != "", shown[-500:]
        assert lines.index("line 999999") > lines.index("line 999000")
        assert "flood printed more than 9,000 lines" in shown and "_azbatch.logs()" in shown
        assert "990,000 lines not shown" in shown, shown[-2000:]
        assert len(shown) < 400_000  # a capped cell output, not 12 MB
        assert kernel.run("print(done)").strip() == "True"
        phases = json.loads(kernel.run("import json; print(json.dumps([(s.phase.value, s.end - s.start) "
                                       "for s in _azbatch.state().phases if s.end]))"))  # fmt: skip
        collecting = dict(phases)["collecting"]
        run_id = kernel.run("print(_azbatch.id)").strip()
        logged = kernel.run("print(_azbatch.logs().count('\\n'))").strip()
        assert logged == str(LINES)
        record = json.loads((home / "runs" / run_id / "outputs.ipynb").read_text())
        assert record["cells"][0]["outputs"][0]["text"].count("\n") == LINES
        print(f"\nflood: {LINES:,} lines, collecting {collecting:.2f} s, kernel RSS grew {grown:.1f} MB")
        assert grown < 100, f"the kernel grew {grown:.0f} MB"
        assert collecting < 60, f"collecting took {collecting:.1f} s"  # a generous guard: the figure is printed
    finally:
        kernel.stop()
    assert os.path.exists(home / "ledger.jsonl")


def test_the_record_keeps_the_first_text_and_says_where_the_rest_is():
    records = [LogRecord(float(i), "stdout", f"line {i}\n") for i in range(1000)]
    out = outputs_of(records, limit=100)
    assert out[0]["text"].startswith("line 0\n") and len(out[0]["text"]) < 120
    assert (
        out[-1]["name"] == "stderr" and "the record stops here: 986 more lines are in the run's log" in out[-1]["text"]
    )
