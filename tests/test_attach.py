"""A run survives its client: a real kernel killed (SIGKILL) mid-run, and a new kernel that lists the
run, is offered its teardown, attaches and gets the results; the same from a terminal (batchmagic ls,
logs, teardown); a ledger several processes append to at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from multiprocessing import Process
from pathlib import Path
from typing import Any

import pytest

from batchmagic.run.ledger import Ledger
from tests.support.emulator import start_emulator, wait_for
from tests.support.settings import use_azure

ROOT = Path(__file__).resolve().parents[1]


def _append(home: Path, writer: int) -> None:
    ledger = Ledger(home, client_id=f"writer-{writer}")
    for i in range(200):
        ledger.record("submitted", f"run-{writer}-{i}", name="x" * 500, backend="local")


def test_the_ledger_takes_several_writers_at_once(tmp_path):
    writers = [Process(target=_append, args=(tmp_path, w)) for w in range(8)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert len(lines) == 1600 and all(json.loads(line)["name"] == "x" * 500 for line in lines)
    assert len(Ledger(tmp_path).runs()) == 1600


class Kernel:
    """A real IPython kernel (jupyter_client) this test can kill."""

    def __init__(self, tmp_path: Path) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.kernel_cmd = []  # the spec's argv, with this interpreter
        self.km.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        self.km.start_kernel(cwd=str(tmp_path))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 120) -> str:
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            content = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(content["text"])
            elif msg["msg_type"] == "error":
                out.append(f"{content['ename']}: {content['evalue']}\n")
            elif msg["msg_type"] in ("execute_result", "display_data"):
                out.append(content.get("data", {}).get("text/plain", "") + "\n")

        self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        return "".join(out)

    def kill(self) -> None:
        self.kc.stop_channels()
        self.km.signal_kernel(signal.SIGKILL)  # no atexit, no teardown
        self.km.cleanup_resources()

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


CELL = (
    "%%azbatch --no-wait --name survivor\nimport time\n"
    "for i in range(12):\n    print('line', i, flush=True)\n    time.sleep(0.5)\nresult = 6 * 7"
)


@pytest.mark.parametrize("backend", ["azure", "local"])
def test_a_new_kernel_attaches_to_the_run_of_a_killed_one(backend, tmp_path, home, monkeypatch, request):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("BATCHMAGIC_BACKEND", backend)
    with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
        if backend == "azure":
            use_azure(monkeypatch, emu, request.getfixturevalue("azurite"), prefix=f"attach-{uuid.uuid4().hex[:4]}")
        first = Kernel(tmp_path)
        try:
            first.run("%load_ext batchmagic\n%config AzBatch.panel = 'text'")
            first.run(CELL)
            log = next(home.glob("ledger.jsonl"))
            run_id = json.loads(log.read_text().splitlines()[0])["run"]
            store_log = home / "runs" / run_id / "task-0" / "output.log"

            def printed_some() -> bool:
                if backend == "local":
                    return store_log.exists() and b"line" in store_log.read_bytes()
                tasks = list(emu.client().list_tasks(run_id))
                return bool(tasks) and str(getattr(tasks[0].state, "value", tasks[0].state)) == "running"

            wait_for(printed_some, timeout=90)
        finally:
            first.kill()
        second = Kernel(tmp_path)
        try:
            second.run("%load_ext batchmagic\n%config AzBatch.panel = 'text'")
            status = second.run("%azbatch_status")
            assert "survivor" in status and "kernel gone" in status and run_id in status, status
            offered = second.run("%azbatch_teardown")
            assert f"%azbatch_attach {run_id}" in offered, offered
            attached = second.run(f"%azbatch_attach {run_id}", timeout=180)
            lines = [line for line in attached.splitlines() if line.startswith("line ")]
            assert lines == [f"line {i}" for i in range(12)], attached
            assert second.run("print(result)").strip() == "42"
            # The same from a terminal.
            cli = [sys.executable, "-m", "batchmagic.cli"]
            ls = subprocess.run([*cli, "ls"], capture_output=True, text=True, timeout=120, check=True).stdout
            assert run_id in ls and "done" in ls, ls
            logs = subprocess.run([*cli, "logs", run_id], capture_output=True, text=True, timeout=120, check=True)
            assert [line for line in logs.stdout.splitlines() if line.startswith("line ")] == lines
            if backend == "azure":
                client = emu.client()
                wait_for(lambda: not list(client.list_pools()), timeout=30)
        finally:
            second.stop()


def test_teardown_orphans_ends_a_dead_kernels_run(tmp_path, home, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "local")
    first = Kernel(tmp_path)
    try:
        first.run("%load_ext batchmagic\n%config AzBatch.panel = 'text'")
        first.run("%%azbatch --no-wait --name stuck\nimport time\ntime.sleep(300)")
        run_id = json.loads((home / "ledger.jsonl").read_text().splitlines()[0])["run"]
        pid_file = home / "runs" / run_id / "task-0" / "pid"
        wait_for(pid_file.exists, timeout=60)
        pid = int(pid_file.read_text().split()[0])
    finally:
        first.kill()
    done = subprocess.run(
        [sys.executable, "-m", "batchmagic.cli", "teardown"], capture_output=True, text=True, timeout=120, check=True
    )
    assert "task-0" in done.stdout and "removed local process" in done.stdout, done.stdout + done.stderr
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2])
    again = subprocess.run([sys.executable, "-m", "batchmagic.cli", "teardown"], capture_output=True, text=True)
    assert "nothing to tear down" in again.stdout


def test_another_kernels_status_only_watches_a_live_kernels_local_sweep(home):
    """%azbatch_status in a second kernel reads a live kernel's local sweep without starting its pending
    tasks (they are the live kernel's to start): no task runs twice."""
    from batchmagic.api import Session

    owner, other = Session(), Session()
    try:
        run = owner.submit("import time\ntime.sleep(2)\ny = x", {}, backend="local", sweep=[{"x": i} for i in range(3)],
                           slots_per_node=1)  # fmt: skip
        (row,) = [r for r in other.status() if r[0].run_id == run.id]
        assert row[2] == "its kernel"
        started = sorted(p.parent.name for p in (home / "runs" / run.id).glob("*/pid"))
        assert started == ["task-00000"]
        assert list(run.wait(timeout=120)["y"]) == [0, 1, 2]
    finally:
        owner.teardown()
        other.teardown()


def test_two_kernels_attaching_at_once_start_each_task_once(tmp_path, home, monkeypatch):
    """A killed kernel's local sweep, pending tasks left: two kernels attach at the same moment. One holds
    the run's lease and starts what is left, the other watches; each task runs once, both get the table."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "local")
    work = tmp_path / "ran.txt"
    cell = (
        "%%azbatch --no-wait --name once --slots-per-node 1 --sweep i=0,1,2,3,4,5\nimport time\n"
        f"open({str(work)!r}, 'a').write(f'{{i}}\\n')\ntime.sleep(1.5)\ny = i * 10"
    )
    first = Kernel(tmp_path)
    try:
        first.run("%load_ext batchmagic\n%config AzBatch.panel = 'text'")
        first.run(cell)
        run_id = json.loads((home / "ledger.jsonl").read_text().splitlines()[0])["run"]
        wait_for(lambda: work.exists() and work.read_text(), timeout=60)
    finally:
        first.kill()
    kernels = [Kernel(tmp_path), Kernel(tmp_path)]
    outputs: dict[int, str] = {}
    try:
        for k in kernels:
            k.run("%load_ext batchmagic\n%config AzBatch.panel = 'text'")

        def attach(n: int) -> None:
            outputs[n] = kernels[n].run(f"t = %azbatch_attach {run_id}", 180)

        threads = [threading.Thread(target=attach, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(200)
        assert len(outputs) == 2, outputs
        assert sorted(work.read_text().split()) == [str(i) for i in range(6)], work.read_text()  # each once
        for k in kernels:
            assert k.run("print(list(t['y']))").strip() == str([i * 10 for i in range(6)])
    finally:
        for k in kernels:
            k.stop()


def test_a_finished_run_whose_job_was_deleted_attaches_from_its_outcome(tmp_path, home, monkeypatch, azurite):
    from batchmagic.api import Session

    with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
        use_azure(monkeypatch, emu, azurite, prefix=f"gone-{uuid.uuid4().hex[:4]}")
        first = Session()
        run = first.submit("print('hello')\nanswer = 6 * 7", {}, backend="azure", name="gone")
        assert run.wait(timeout=180)["answer"] == 42
        client = emu.client()
        client.begin_delete_job(run.id).result()
        wait_for(lambda: run.id not in [job.id for job in client.list_jobs()], timeout=60)
        other = Session()
        attached = other.attach(run.id)
        started = time.monotonic()
        assert attached.wait(timeout=120)["answer"] == 42
        assert time.monotonic() - started < 30 and attached.status == "done"
        assert "hello" in attached.logs()
        other.teardown()
        first.teardown()


def test_a_watcher_takes_over_when_the_kernel_holding_the_run_dies(tmp_path, home, monkeypatch):
    """Three kernels: the one that submitted a local sweep is killed; the second attaches and starts what is
    left; the third attaches and watches; the second is killed too: the third takes the lease over and
    finishes the sweep. Each task runs once."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "local")
    work = tmp_path / "ran.txt"
    cell = (
        "%%azbatch --no-wait --name relay --slots-per-node 1 --sweep i=0,1,2,3,4,5\nimport time\n"
        f"open({str(work)!r}, 'a').write(f'{{i}}\\n')\ntime.sleep(2)\ny = i * 10"
    )
    first = Kernel(tmp_path)
    try:
        first.run("%load_ext batchmagic\n%config AzBatch.panel = 'text'")
        first.run(cell)
        run_id = json.loads((home / "ledger.jsonl").read_text().splitlines()[0])["run"]
        wait_for(lambda: work.exists() and work.read_text(), timeout=60)
    finally:
        first.kill()
    second, third = Kernel(tmp_path), Kernel(tmp_path)
    outputs: dict[str, str] = {}
    try:
        for k in (second, third):
            k.run("%load_ext batchmagic\n%config AzBatch.panel = 'text'")

        def attach(name: str, kernel: Kernel) -> None:
            try:
                outputs[name] = kernel.run(f"t = %azbatch_attach {run_id}", 180)
            except Exception as err:  # the killed kernel's cell never ends
                outputs[name] = repr(err)

        holder = threading.Thread(target=attach, args=("second", second), daemon=True)
        holder.start()
        wait_for(lambda: len(work.read_text().split()) >= 2, timeout=60)  # the second started one more
        watcher = threading.Thread(target=attach, args=("third", third))
        watcher.start()
        time.sleep(1.0)
        second.kill()
        watcher.join(200)
        assert sorted(work.read_text().split()) == [str(i) for i in range(6)], work.read_text()  # each once
        assert third.run("print(list(t['y']))").strip() == str([i * 10 for i in range(6)]), outputs
    finally:
        third.stop()
