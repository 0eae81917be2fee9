"""Nothing outlives its run: a local run's processes, a failed submit's job, pool and blobs, a short copy
in the local object cache."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from batchmagic.errors import RunFailed
from batchmagic.protocol import Layout
from batchmagic.storage import LocalStore
from tests.support.emulator import start_emulator, wait_for
from tests.support.settings import use_azure


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_local_run_ends_the_processes_its_cell_started(shell):
    shell.run_cell(
        "%%azbatch --backend local\nimport subprocess\nchild = subprocess.Popen(['sleep', '40']).pid\nprint('started')"
    )
    run = shell.user_ns["_azbatch"]
    assert run.status == "done"
    child = shell.user_ns["child"]
    wait_for(lambda: not alive(child), timeout=10)
    # The runner did not wait for the child's pipes (two 5 s joins before): the cell's span is short.
    running = [span for span in run.state().phases if span.phase.value == "running"]
    assert running and running[0].duration() < 5 + 5, running


def test_a_child_that_ignores_sigterm_goes_too(shell):
    shell.run_cell(
        "%%azbatch --backend local\nimport subprocess\n"
        "child = subprocess.Popen(['sh', '-c', 'trap \"\" TERM; sleep 40']).pid"
    )
    wait_for(lambda: not alive(shell.user_ns["child"]), timeout=10)


def test_put_file_never_leaves_a_short_copy(tmp_path, monkeypatch):
    import batchmagic.storage as storage

    store = LocalStore(tmp_path / "home")
    source = tmp_path / "value.pkl"
    source.write_bytes(os.urandom(100_000))
    from batchmagic.protocol import sha256_file

    key = Layout.object(sha256_file(source))

    def short_copy(src, dst, **kwargs):  # a full disk: the copy stops half-way, without an error
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])

    monkeypatch.setattr(storage.shutil, "copyfile", short_copy)
    with pytest.raises(OSError, match="wrote 1000 of 100000 bytes"):
        store.put_file(key, source)
    assert not store.exists(key)
    assert not any(p.name.endswith(".part") for p in (tmp_path / "home").rglob("*"))
    monkeypatch.undo()
    store.put_file(key, source)
    assert store.get_bytes(key) == source.read_bytes()


@pytest.fixture
def small_home(tmp_path, monkeypatch, home) -> Path:
    """BATCHMAGIC_HOME on a 2 MB tmpfs (unmounted afterwards)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    monkeypatch.setenv("BATCHMAGIC_HOME", str(mount))
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_does_not_poison_the_object_cache(small_home, shell):
    shell.run_cell("big = bytes(range(256)) * (17 * 4096)")  # over the 16 MB threshold: a cached object
    with pytest.raises(RunFailed, match="could not store run") as info:
        shell.run_cell("%%azbatch --backend local\nsize = len(big)")
    assert "\n" not in str(info.value)
    objects = small_home / "objects"
    assert not objects.exists() or not [p for p in objects.rglob("*") if p.is_file()]
    assert not (small_home / "runs").exists() or not any((small_home / "runs").iterdir())  # the failed run's data
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_home)], check=True)
    shell.run_cell("%%azbatch --backend local\nsize = len(big)")
    assert shell.user_ns["size"] == 17 * 4096 * 256


@pytest.mark.parametrize("keep", [False, True])
def test_a_run_failing_during_submit_leaves_nothing(shell, home, tmp_path, monkeypatch, azurite, keep):
    with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
        container = use_azure(monkeypatch, emu, azurite, prefix=f"fail-{uuid.uuid4().hex[:4]}")
        monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
        from azure.core.exceptions import ServiceResponseError

        from batchmagic.backends.azure import calls
        from batchmagic.backends.azure.backend import AzureBackend

        real = AzureBackend.submit

        def submit(self, submission):  # the connection drops once the job exists, before its task is added
            def broken(*args, **kwargs):
                raise ServiceResponseError("Connection reset by peer")

            monkeypatch.setattr(self.client, "create_task", broken)
            return real(self, submission)

        monkeypatch.setattr(AzureBackend, "submit", submit)
        monkeypatch.setattr(
            calls, "RETRIES", 2
        )  # the dropped connection is for good: retrying it 8 times proves nothing more
        with pytest.raises(RunFailed) as info:
            shell.run_cell(f"%%azbatch {'--keep-failed' if keep else ''}\nx = 1")
        assert "\n" not in str(info.value) and "add the task" in str(info.value)
        run = shell.user_ns.get("_azbatch") or shell.magics_manager.registry["AzBatch"].session.runs[-1]
        client = emu.client()
        wait_for(lambda: not list(client.list_jobs()), timeout=20)  # deleted, not just terminated
        wait_for(lambda: not list(client.list_pools()), timeout=20)
        blobs = azurite.blob_names(container, f"runs/{run.id}/")
        if keep:
            assert f"runs/{run.id}/task-0/spec.json" in blobs
        else:
            assert blobs == []
            assert azurite.blob_names(run.outbox.container_name) == []
        shell.run_line_magic("azbatch_teardown", "")  # while Batch is there to answer (the fixture's comes after)
