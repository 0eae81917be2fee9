"""``python -m batchmagic.runner --spec spec.json`` as a real subprocess, fed by capture()."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import batchmagic
from batchmagic.errors import RemoteError
from batchmagic.package.capture import capture
from batchmagic.protocol import SCHEMA_VERSION, TaskOutcome
from batchmagic.run.collect import load_outputs
from batchmagic.runner import EXIT_CELL_ERROR, EXIT_OK, EXIT_SETUP_ERROR, EXIT_TERMINATED

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and paths")


@dataclass
class Task:
    root: Path
    spec: Path
    log: Path
    result: Path
    workdir: Path

    def command(self) -> list[str]:
        return [sys.executable, "-P", "-m", "batchmagic.runner", "--spec", str(self.spec)]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(Path(batchmagic.__file__).resolve().parents[1])  # this checkout's runner
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def outcome(self) -> TaskOutcome:
        return TaskOutcome.from_bytes(self.result.read_bytes())

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def streams(self) -> list[tuple[str, str]]:
        """The log as (stream, text) runs: consecutive records of one stream joined."""
        runs: list[tuple[str, str]] = []
        for record in self.records():
            if runs and runs[-1][0] == record["s"]:
                runs[-1] = (record["s"], runs[-1][1] + record["d"])
            else:
                runs.append((record["s"], record["d"]))
        return runs


def names_of(outcome: TaskOutcome, report: Callable[[str], Any] = pytest.fail) -> dict[str, Any]:
    """The names an outcome brings back, as the notebook loads them (names pickled together or apart)."""
    return load_outputs(outcome, report)


def _prepare(
    root: Path, cell: str, namespace: Mapping[str, Any], *, outputs: list[str] | None = None, **spec: Any
) -> Task:
    root.mkdir(parents=True, exist_ok=True)
    task_dir = root / "store" / "runs" / "r1" / "t0"
    task_dir.mkdir(parents=True)
    bundle = root / "store" / "runs" / "r1" / "bundle"
    capture(textwrap.dedent(cell), namespace, bundle, outputs=outputs)
    task = Task(root, task_dir / "spec.json", task_dir / "output.log", task_dir / "result", root / "wd")
    task.workdir.mkdir()
    spec = {
        "run_id": "r1",
        "task_id": "t0",
        "bundle": bundle.as_uri(),
        "log": task.log.as_uri(),
        "result": task.result.as_uri(),
        **spec,
    }
    task.spec.write_text(json.dumps(spec))
    return task


def _run(task: Task, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        task.command(), cwd=task.workdir, env=task.env(), capture_output=True, text=True, timeout=timeout
    )


def test_success_returns_outputs(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "import math\ny = x * 2\nroot = math.sqrt(y)\nprint('y is', y)", {"x": 8})
    done = _run(task)
    assert done.returncode == EXIT_OK, done.stderr
    assert "y is 16" in done.stdout  # written through to the real stdout too
    outcome = task.outcome()
    assert outcome.ok is True
    assert outcome.task_id == "t0"
    assert outcome.ended >= outcome.started
    outputs = names_of(outcome)
    assert outputs["y"] == 16
    assert outputs["root"] == 4.0
    assert outputs["math"].__name__ == "math"
    assert set(outputs) == {"math", "y", "root"}
    assert outcome.skipped == {}
    assert outcome.deleted == ()
    assert task.streams() == [("o", "y is 16\n")]


def test_outputs_that_share_objects_travel_together_and_the_others_apart(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "a = b = [1]\nd = {'xs': a}\nc = [2]\nn = 3", {})
    assert _run(task).returncode == EXIT_OK
    outcome = task.outcome()
    assert outcome.outputs["a"] is outcome.outputs["b"] is outcome.outputs["d"]  # one pickle, stored once
    assert outcome.outputs["c"] is not outcome.outputs["a"]  # apart: one that cannot load sinks no other
    names = names_of(outcome)
    assert names["a"] is names["b"] is names["d"]["xs"] and names["c"] == [2] and names["n"] == 3


def test_outputs_are_limited_and_notebook_functions_run(tmp_path: Path) -> None:
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec("OFFSET = 1\ndef train(d, a):\n    return sum(d) * a + OFFSET\n", ns)
    cell = "model = train(data, alpha)\nextra = 1"
    task = _prepare(tmp_path, cell, {"train": ns["train"], "data": [1, 2, 3], "alpha": 0.5}, outputs=["model"])
    done = _run(task)
    assert done.returncode == EXIT_OK, done.stderr
    outputs = task.outcome().outputs
    assert list(outputs) == ["model"]
    assert names_of(task.outcome())["model"] == 4.0


def test_cell_error_is_remote_error_ready(tmp_path: Path) -> None:
    cell = """\
    a = 1
    def helper(v):
        return v / 0
    b = helper(a)  # the failing line
    """
    task = _prepare(tmp_path, cell, {})
    done = _run(task)
    assert done.returncode == EXIT_CELL_ERROR, done.stderr
    outcome = task.outcome()
    assert outcome.ok is False
    assert outcome.phase == "cell"
    error = outcome.error
    assert error.type == "ZeroDivisionError"
    assert error.message == "division by zero"
    text = "".join(error.traceback)
    assert 'File "<azbatch-cell>", line 4, in <module>' in text
    assert "b = helper(a)  # the failing line" in text
    assert 'File "<azbatch-cell>", line 3, in helper' in text
    assert "return v / 0" in text
    assert text.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "batchmagic/runner" not in text
    assert "batchmagic" not in text
    remote = RemoteError(error.type, error.message, list(error.traceback), "t0")
    assert str(remote) == "ZeroDivisionError: division by zero"
    assert pickle.loads(pickle.dumps(remote)).traceback == list(error.traceback)
    remote.outputs = {"a": 1}  # what a cell kept before it raised, and the note that says so
    remote.add_note("batchmagic: the cell assigned `a` before it raised")
    again = pickle.loads(pickle.dumps(remote))
    assert again.outputs == {"a": 1} and again.__notes__ == remote.__notes__ and again.task_id == "t0"
    rendered = "\n".join(remote._render_traceback_())
    assert "b = helper(a)" in rendered


def test_chained_error_keeps_both_and_no_runner_frames(tmp_path: Path) -> None:
    cell = """\
    import json
    try:
        json.loads("{bad")
    except ValueError as err:
        raise KeyError("config") from err
    """
    task = _prepare(tmp_path, cell, {})
    assert _run(task).returncode == EXIT_CELL_ERROR
    error = task.outcome().error
    assert error.type == "KeyError"
    text = "".join(error.traceback)
    assert "json.decoder.JSONDecodeError" in text
    assert "direct cause" in text
    assert 'raise KeyError("config") from err' in text
    assert "batchmagic/runner" not in text


def test_custom_exception_type_name(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "import json\njson.loads('nope')", {})
    assert _run(task).returncode == EXIT_CELL_ERROR
    assert task.outcome().error.type == "json.decoder.JSONDecodeError"


def test_corrupted_bundle_is_a_setup_error(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "y = x + 1", {"x": b"Z" * 2000})
    bundle = tmp_path / "store" / "runs" / "r1" / "bundle"
    data = bytearray(bundle.read_bytes())
    data[data.index(b"Z" * 2000) + 1000] = ord("Y")
    bundle.write_bytes(bytes(data))
    done = _run(task)
    assert done.returncode == EXIT_SETUP_ERROR, done.stderr
    outcome = task.outcome()
    assert outcome.ok is False
    assert outcome.phase == "setup"
    assert outcome.error.type == "batchmagic.package.bundle.BundleError"


def test_missing_bundle_is_a_setup_error(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "y = 1", {})
    (tmp_path / "store" / "runs" / "r1" / "bundle").unlink()
    assert _run(task).returncode == EXIT_SETUP_ERROR
    assert task.outcome().phase == "setup"


def test_stdout_and_stderr_interleave_in_order(tmp_path: Path) -> None:
    cell = """\
    import sys
    print("out 1")
    print("err 1", file=sys.stderr)
    print("out 2")
    sys.stderr.write("err 2\\n")
    sys.stdout.write("out 3\\n")
    """
    task = _prepare(tmp_path, cell, {})
    done = _run(task)
    assert done.returncode == EXIT_OK, done.stderr
    *printed, shown = task.streams()
    assert printed == [("o", "out 1\n"), ("e", "err 1\n"), ("o", "out 2\n"), ("e", "err 2\n"), ("o", "out 3\n")]
    # The last expression's value (write's count) is displayed, marked as the value that travels in the
    # outcome to be the notebook's Out.
    assert shown == (
        "d",
        {
            "output_type": "execute_result",
            "execution_count": None,
            "data": {"text/plain": "6"},
            "metadata": {"batchmagic_value": True},
        },
    )
    records = task.records()
    assert all(set(r) == {"t", "s", "d"} for r in records)
    times = [r["t"] for r in records]
    assert times == sorted(times)
    assert "err 1" in done.stderr and "out 3" in done.stdout


def test_error_output_before_the_exception_is_logged(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "print('partial')\n1 / 0", {})
    assert _run(task).returncode == EXIT_CELL_ERROR
    assert task.streams() == [("o", "partial\n")]


@pytest.fixture
def local_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    project = tmp_path / "project"
    (project / "bm_runpkg").mkdir(parents=True)
    (project / "bm_runmod.py").write_text("from bm_runpkg.core import base\n\ndef score(v):\n    return base() + v\n")
    (project / "bm_runpkg" / "__init__.py").write_text("")
    (project / "bm_runpkg" / "core.py").write_text("def base():\n    return 100\n")
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    yield project
    for name in list(sys.modules):
        if name.split(".")[0] in ("bm_runmod", "bm_runpkg"):
            del sys.modules[name]


def test_local_module_shipped_as_source_is_importable(tmp_path: Path, local_module: Path) -> None:
    import bm_runmod  # type: ignore[import-not-found]

    cell = "from bm_runpkg.core import base\ns = bm_runmod.score(5) + base()\nwhere = bm_runmod.__file__"
    task = _prepare(tmp_path / "run", cell, {"bm_runmod": bm_runmod})
    done = _run(task)
    assert done.returncode == EXIT_OK, done.stderr
    outputs = {k: v for k, v in names_of(task.outcome()).items() if k != "base"}
    assert outputs["s"] == 205
    # imported from the shipped copy, not from the project directory
    assert not outputs["where"].startswith(str(local_module))
    assert str(task.workdir) in outputs["where"]


def test_a_cell_that_uses_a_multiprocessing_pool_is_not_taken_for_terminated(tmp_path: Path) -> None:
    """A Pool ends its workers with SIGTERM: forked from the runner, they must not pass it on as the
    runner's own (through the runner's signal wakeup pipe)."""
    cell = (
        "import multiprocessing, time\nwith multiprocessing.Pool(2) as pool:\n    out = pool.map(abs, [-1, -2])\n"
        "time.sleep(1)"
    )
    task = _prepare(tmp_path, cell, {})
    done = _run(task, timeout=60)
    assert done.returncode == EXIT_OK, done.stderr
    assert names_of(task.outcome())["out"] == [1, 2]


def test_a_folder_named_like_the_runner_in_the_working_directory_does_not_shadow_it(tmp_path: Path) -> None:
    """A rerun finds the first attempt's skeleton of the notebook's folder in its working directory; when
    that folder holds ``batchmagic/runner/`` (the project's own checkout), ``python -m`` would import it as
    a namespace package ahead of the installed runner. The task's command line, as the backends write
    it, must still start the runner, and the cell still imports what its working directory holds."""
    from batchmagic.backends.azure.requests import COMMAND

    task = _prepare(tmp_path, "import helper\nvalue = helper.VALUE", {})
    (task.workdir / "batchmagic" / "runner").mkdir(parents=True)
    (task.workdir / "helper.py").write_text("VALUE = 7\n")
    argv = shlex.split(COMMAND.replace("python3", sys.executable, 1).replace("spec.json", str(task.spec)))
    env = {k: v for k, v in task.env().items() if k != "PYTHONPATH"}  # the installed package, as on a node
    done = subprocess.run(argv, cwd=task.workdir, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_OK, done.stderr
    assert names_of(task.outcome(), print)["value"] == 7  # `helper` is the working directory's, not this process's


def test_sigterm_flushes_the_log_and_writes_a_result(tmp_path: Path) -> None:
    cell = """\
    import sys, time
    print("before sleep")
    print("warned", file=sys.stderr)
    time.sleep(30)
    print("after sleep")
    """
    # A long log interval: only the final flush on the way out can put the lines in the log.
    task = _prepare(tmp_path, cell, {}, log_interval=60)
    proc = subprocess.Popen(
        task.command(), cwd=task.workdir, env=task.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "before sleep\n"
        assert proc.stderr is not None
        assert proc.stderr.readline() == "warned\n"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)  # a hang guard: the sleep(30) must not be waited out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert code == EXIT_TERMINATED
    assert task.streams() == [("o", "before sleep\n"), ("e", "warned\n")]
    outcome = task.outcome()
    assert outcome.ok is False and outcome.phase == "terminated"
    assert outcome.outputs == {}  # stopped mid-statement: nothing it bound (sys, time) is kept
    assert "terminated" in outcome.error.message
    text = "".join(outcome.error.traceback)
    # SIGTERM lands in the sleep, or still in the write of "warned" that the test just read.
    assert re.search(r'File "<azbatch-cell>", line [34]', text), text
    assert "batchmagic/runner" not in text  # not even the signal handler's frame


def test_a_sigterm_handled_outside_the_main_thread_still_ends_a_blocking_call(tmp_path: Path) -> None:
    """The race a cancel can lose: SIGTERM lands just before the cell's blocking call, so Python's
    handler waits for the call to return. Delivered to another thread of the cell, it is that race every
    time; the runner must still end the sleep and write its result."""
    cell = """\
    import signal, threading, time
    def nudge():
        time.sleep(0.5)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # to this thread, not the main one
    threading.Thread(target=nudge).start()
    time.sleep(60)
    """
    task = _prepare(tmp_path, cell, {})
    done = _run(task, timeout=30)  # without the nudge, the sleep(60) would be waited out
    assert done.returncode == EXIT_TERMINATED, done.stderr
    assert task.outcome().phase == "terminated"


RAISES_LATE = """\
import threading
a = 1
lock = threading.Lock()
xs.append(5)
del gone
raise ValueError('late')
ys = ys + [1]
b = 2
"""


def test_a_cell_that_raises_keeps_what_it_did_before_the_raise(tmp_path: Path) -> None:
    """As in the notebook: what the cell assigned, changed and deleted before the raise comes back with
    its error (an unpicklable name is named); ``ys``, read and assigned only after the raise, stays."""
    task = _prepare(tmp_path, RAISES_LATE, {"xs": [1], "ys": [0], "gone": 3})
    assert _run(task).returncode == EXIT_CELL_ERROR
    outcome = task.outcome()
    assert (outcome.ok, outcome.phase, outcome.error.type, outcome.error.message) == (
        False,
        "cell",
        "ValueError",
        "late",
    )
    outputs = names_of(outcome)
    assert {k: v for k, v in outputs.items() if k != "threading"} == {"a": 1, "xs": [1, 5]}
    assert set(outputs) == {"threading", "a", "xs"}
    assert list(outcome.skipped) == ["lock"] and "cannot be pickled" in outcome.skipped["lock"]
    assert outcome.changed == ("xs",) and outcome.deleted == ("gone",)


def test_a_cell_that_raises_keeps_only_its_out_names(tmp_path: Path) -> None:
    task = _prepare(tmp_path, RAISES_LATE, {"xs": [1], "ys": [0], "gone": 3}, outputs=["xs"])
    assert _run(task).returncode == EXIT_CELL_ERROR
    outcome = task.outcome()
    assert list(outcome.outputs) == ["xs"] and outcome.skipped == {} and outcome.error.type == "ValueError"


def test_a_cell_that_exits_nonzero_keeps_what_it_did_before(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "a = 1\nimport sys\nsys.exit(3)", {})
    assert _run(task).returncode == EXIT_CELL_ERROR
    outcome = task.outcome()
    assert outcome.phase == "exit" and set(outcome.outputs) == {"a", "sys"}


@pytest.mark.parametrize(
    "spec",
    [{"params": {"k": cloudpickle.dumps(1).hex()}}, {"task_id": "rank-0"}],
    ids=["a sweep's task", "a distributed run's rank"],
)
def test_a_sweep_task_or_a_rank_that_raises_keeps_nothing(tmp_path: Path, spec: dict[str, Any]) -> None:
    task = _prepare(tmp_path, RAISES_LATE, {"xs": [1], "ys": [0], "gone": 3}, **spec)
    assert _run(task).returncode == EXIT_CELL_ERROR
    outcome = task.outcome()
    assert outcome.error.type == "ValueError" and outcome.outputs == {} and outcome.deleted == ()


def test_as_received_trusts_a_known_hash_and_downloads_nothing_for_it() -> None:
    """Which names a cell that raised left as it received them: a large object's hash alone decides (no
    second download of it); a bundled value gets the second look."""
    import hashlib

    from batchmagic.runner.changes import as_received

    shipped, other = cloudpickle.dumps([1], protocol=5), cloudpickle.dumps([2], protocol=5)
    asked: list[str] = []

    def received(name: str) -> bytes:
        asked.append(name)
        return shipped

    digest = hashlib.sha256(shipped).hexdigest()
    outputs = {"same": shipped, "assigned": other, "big": shipped, "big_assigned": other}
    assert as_received(outputs, received, {"big": digest, "big_assigned": digest}) == ["same", "big"]
    assert asked == ["same", "assigned"]


def test_unpicklable_output_is_skipped_others_come_back(tmp_path: Path) -> None:
    cell = "import threading\nlock = threading.Lock()\ngen = (i for i in range(3))\ncount = 3"
    task = _prepare(tmp_path, cell, {})
    done = _run(task)
    assert done.returncode == EXIT_OK, done.stderr
    outcome = task.outcome()
    assert set(outcome.skipped) == {"lock", "gen"}
    assert "lock" in outcome.skipped["lock"] and "cannot be pickled" in outcome.skipped["lock"]
    assert set(outcome.outputs) == {"threading", "count"}
    assert names_of(outcome)["count"] == 3


def test_deleted_names_are_reported(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "y = len(big)\ndel big\ntmp = 1\ndel tmp", {"big": [0] * 10})
    done = _run(task)
    assert done.returncode == EXIT_OK, done.stderr
    outcome = task.outcome()
    assert sorted(outcome.deleted) == ["big", "tmp"]
    assert set(outcome.outputs) == {"y"}


def test_empty_outputs_bring_nothing_back(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "a = 1\nb = 2", {}, outputs=[])
    assert _run(task).returncode == EXIT_OK
    assert task.outcome().outputs == {}


def test_params_are_injected(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "y = lr * 10", {"lr": 0.1}, params={"lr": cloudpickle.dumps(0.5).hex()})
    assert _run(task).returncode == EXIT_OK
    assert names_of(task.outcome())["y"] == 5.0


#: What a runner imports only when its cell needs it (each costs a runner's start milliseconds of CPU): the
#: pickler, an error's traceback, the GPU checks, a pool of threads to move files with, the command line's
#: other forms (argparse), the client's logging. (Not platform: numpy imports it, and a runner imports numpy
#: to set the notebook's seeded generators when this test process has imported it.)
NOT_AT_START = (
    "argparse", "batchmagic.runner.gpu", "cloudpickle", "concurrent.futures", "logging", "subprocess", "traceback",
)  # fmt: skip


def test_a_runner_imports_what_its_cell_needs_only_when_it_does(tmp_path: Path) -> None:
    """A cell that receives plain values runs with none of NOT_AT_START imported; what it binds comes back
    all the same (the pickler is imported then)."""
    cell = f"import sys\nloaded = [m for m in {NOT_AT_START!r} if m in sys.modules]\ny = x * 2"
    task = _prepare(tmp_path, cell, {"x": 8})
    done = _run(task)
    assert done.returncode == EXIT_OK, done.stderr
    outputs = {name: cloudpickle.loads(data) for name, data in task.outcome().outputs.items()}
    assert (outputs["loaded"], outputs["y"]) == ([], 16)


def test_a_node_supervisor_imports_nothing_a_small_cell_does_without() -> None:
    """The node supervisor imports the runner before it forks its ranks: not what a rank imports when its
    cell needs it."""
    code = "import sys, batchmagic.runner.ranks, batchmagic.runner.main; print(' '.join(sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(Path(batchmagic.__file__).resolve().parents[1])}  # this checkout's
    done = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, check=True)
    assert not set(NOT_AT_START) & set(done.stdout.split())


def test_spec_given_as_a_file_url(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "y = 1", {})
    done = subprocess.run(
        [sys.executable, "-m", "batchmagic.runner", "--spec", task.spec.as_uri()],
        cwd=task.workdir,
        env=task.env(),
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == EXIT_OK
    assert task.outcome().ok is True


def test_other_forms_of_the_command_line_are_argparses(tmp_path: Path) -> None:
    """`--spec=PATH` runs as `--spec PATH` does; no spec is argparse's usage error (exit 2)."""
    task = _prepare(tmp_path, "y = 1", {})
    command = [sys.executable, "-P", "-m", "batchmagic.runner"]
    done = subprocess.run([*command, f"--spec={task.spec}"], cwd=task.workdir, env=task.env(), timeout=30)
    assert done.returncode == EXIT_OK and task.outcome().ok is True
    refused = subprocess.run(command, cwd=task.workdir, env=task.env(), capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "the following arguments are required: --spec" in refused.stderr


def test_spec_from_a_newer_batchmagic_is_refused_in_one_line(tmp_path: Path) -> None:
    task = _prepare(tmp_path, "y = 1", {})
    spec = json.loads(task.spec.read_text())
    task.spec.write_text(json.dumps({**spec, "schema": SCHEMA_VERSION + 1, "a_field_from_the_future": 1}))
    done = _run(task)
    assert done.returncode == EXIT_SETUP_ERROR
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"schema version {SCHEMA_VERSION + 1}" in lines[0] and f"up to {SCHEMA_VERSION}" in lines[0]
    outcome = task.outcome()  # the newer client still learns why, through the result the spec names
    assert outcome.ok is False and outcome.phase == "setup"
    assert outcome.error is not None and outcome.error.type == "SpecVersionError"
    assert lines[0].endswith(outcome.error.message)


def test_log_sink_sends_a_line_after_a_quiet_interval_at_once_and_holds_the_rest_to_its_interval() -> None:
    import threading

    from batchmagic.runner.logsink import LogSink

    class Channel:
        def __init__(self) -> None:
            self.appends: list[bytes] = []
            self.arrived = threading.Event()

        def append(self, data: bytes) -> None:
            self.appends.append(data)
            self.arrived.set()

    channel = Channel()
    sink = LogSink(channel, interval=60.0).start()  # type: ignore[arg-type]
    sink.add("stdout", "first line\n")
    assert channel.arrived.wait(20), "the first line waited for the flush interval"
    channel.arrived.clear()
    sink.add("stdout", "second line\n")  # right after an append: it waits for the interval (or the end)
    assert not channel.arrived.wait(0.5)
    sink.close()
    assert len(channel.appends) == 2 and b"second line" in channel.appends[1]


def test_a_warm_worker_hashes_a_shared_object_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the warm worker hashed before forking (check_objects) its runners trust while the file is
    untouched; a file altered since is hashed again, and refused when it no longer matches."""
    from batchmagic.package.bundle import BundleError
    from batchmagic.protocol import ObjectRef, TaskSpec, sha256_file
    from batchmagic.runner import main as runner

    monkeypatch.setattr(runner, "_CHECKED", {})
    path = tmp_path / "object"
    path.write_bytes(cloudpickle.dumps(list(range(1000))))
    ref = ObjectRef(path.as_uri(), sha256_file(path), path.stat().st_size)
    spec = tmp_path / "spec.json"
    spec.write_bytes(TaskSpec("r", "t", "file:///b", "file:///l", "file:///r", objects={"xs": ref}).to_json())
    runner.check_objects(str(spec))  # in the worker, once
    hashed: list[Path] = []
    monkeypatch.setattr(runner, "sha256_file", lambda p: hashed.append(p) or sha256_file(p))
    for _ in range(3):  # a sweep's tasks
        assert runner._load_object("xs", ref, tmp_path) == list(range(1000))  # noqa: SLF001
    assert hashed == [] and path.exists()  # read where it is, never hashed again, never removed
    with path.open("ab") as f:
        f.write(b"altered")
    with pytest.raises(BundleError, match="does not match its hash"):
        runner._load_object("xs", ref, tmp_path)  # noqa: SLF001
    assert hashed == [path]


# A runner that cannot be a subreaper (not Linux) signals its process group, itself in it.
NOT_A_SUBREAPER = "import sys, batchmagic.runner.main as m; m.become_subreaper = lambda: False; sys.exit(m.main())"


@pytest.mark.parametrize("subreaper", [True, False])
@pytest.mark.parametrize("cancel", [True, False])
def test_a_sigterm_while_the_runner_ends_what_the_cell_left_is_not_lost(
    tmp_path: Path, subreaper: bool, cancel: bool
) -> None:
    """Ending a leftover child that ignores SIGTERM takes the runner its grace (reap.TERM_GRACE) and a SIGKILL: a cancel
    that comes then must still end the run as terminated, not be thrown away and the run reported done (nor
    the SIGTERM a runner sends its own group taken for a cancel)."""
    cell = """\
    import subprocess, sys
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    print("cell done", flush=True)
    """
    task = _prepare(tmp_path, cell, {}, outputs=[])
    command = task.command() if subreaper else [sys.executable, "-P", "-c", NOT_A_SUBREAPER, *task.command()[4:]]
    proc = subprocess.Popen(
        command, cwd=task.workdir, env=task.env(), stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "cell done\n"
        if cancel:
            time.sleep(0.2)  # the runner is in the leftover child's grace now
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == (EXIT_TERMINATED if cancel else EXIT_OK)
    outcome = task.outcome()
    assert (outcome.ok, outcome.phase) == ((False, "terminated") if cancel else (True, "cell"))


def _unwritable(workdir: Path, command: list[str]) -> list[str]:
    """``command`` run in ``workdir`` that it cannot write: a mode that forbids it, or, for root (whom no
    mode stops), a read-only bind mount of it in a mount namespace of its own."""
    if os.geteuid() != 0:
        workdir.chmod(0o555)
        return command
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("root, and no mount namespace to make a read-only directory in")
    d = shlex.quote(str(workdir))
    script = f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && cd {d} && exec {shlex.join(command)}"
    return ["unshare", "-m", "sh", "-c", script]


def test_a_working_directory_the_runner_cannot_write_is_said_in_one_line(tmp_path: Path) -> None:
    folder = {"origin": "/home/me/project", "dirs": ["data"], "url": (tmp_path / "outbox").as_uri(), "prefix": ""}
    task = _prepare(tmp_path, "x = 1", {}, folder=folder)
    command = _unwritable(task.workdir, task.command())
    done = subprocess.run(command, cwd=task.workdir, env=task.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_SETUP_ERROR, done.stderr
    error = task.outcome().error
    assert error.type.endswith("WorkdirNotWritableError")
    assert f"working directory {task.workdir} is not writable by this runner" in error.message
    assert "Azure Batch and the local backend" in error.message
    assert "Traceback" not in "".join(error.traceback)  # the one line, no runner frames
    assert not (task.workdir / "data").exists()


def test_a_machine_without_proc_ends_a_cell_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS has no /proc: a runner's end finds no descendants to list (the backends signal its group), and
    never fails the run for it."""
    from batchmagic.runner import reap

    real_isdir, real_listdir = os.path.isdir, os.listdir

    def listdir(path: str) -> list[str]:
        if str(path).startswith("/proc"):
            raise FileNotFoundError(path)
        return real_listdir(path)

    monkeypatch.setattr(reap.os, "listdir", listdir)
    monkeypatch.setattr(reap.os.path, "isdir", lambda path: path != "/proc" and real_isdir(path))
    assert reap.children(os.getpid()) == [] and reap.descendants(os.getpid()) == []
    reap.end_descendants()  # nothing to end, no error
