"""`batchmagic emulator`: Azurite and the Batch emulator on this machine, their settings in an env file that
`%load_ext batchmagic` loads; Ctrl-C stops both and leaves nothing behind. Through the real parts: the command
as a newcomer types it, Azurite from node_modules, the emulator, a real shell, a real kernel."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from traitlets.config import Config

from batchmagic.sandbox import (
    AZURITE_KEY,
    BATCH_KEY,
    ENV_FILE,
    OWN_SETTINGS,
    adopt_env_file,
    env_values,
    parse_env_file,
    render_env_file,
)
from tests import conftest
from tests.support.azurite import azurite_binary

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "batchmagic.cli", "emulator"]
SETTINGS = (*OWN_SETTINGS, "AZURE_BATCH_ACCOUNT", "AZURE_BATCH_ACCESS_KEY", "BATCHMAGIC_IMAGE", "BATCHMAGIC_REGION")


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("BATCHMAGIC_")}
    return {**env, "BATCHMAGIC_HOME": str(home), "PYTHONPATH": str(ROOT)}


def _children(pid: int) -> set[int]:
    """Every process below ``pid`` (services, their task processes)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            text = (task / "children").read_text() if (task / "children").exists() else ""
            for child in map(int, text.split()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`batchmagic emulator` started as a newcomer starts it, until its settings file appears."""
    azurite_binary()  # fails with the reason (never skips) when Azurite is not installed
    home = tmp_path / "bmhome"
    proc = subprocess.Popen(CLI, env=_clean_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (home / ENV_FILE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    yield proc, home
    if proc.poll() is None:  # the test failed before its Ctrl-C: stop it as a user would
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_file_round_trips_and_is_loaded_only_while_its_command_runs(tmp_path: Path) -> None:
    values = env_values(10000, 8123)
    text = render_env_file(values, os.getpid())
    assert parse_env_file(text) == (values, os.getpid())
    (tmp_path / ENV_FILE).write_text(text)
    # This process stands in for the command; nothing listens on 8123, so the file is stale.
    assert adopt_env_file(tmp_path, {}) is None
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        (tmp_path / ENV_FILE).write_text(render_env_file(env_values(10000, port), os.getpid()))
        assert adopt_env_file(tmp_path, {"AZURE_BATCH_ACCOUNT": "mine"}) == {
            k: v for k, v in env_values(10000, port).items() if k != "AZURE_BATCH_ACCOUNT"
        }
        for name in OWN_SETTINGS:  # the environment names an account or backend of its own: left alone
            assert adopt_env_file(tmp_path, {name: "x"}) is None
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (tmp_path / ENV_FILE).write_text(render_env_file(env_values(10000, port), int(dead.stdout)))
        assert adopt_env_file(tmp_path, {}) is None  # its command is gone


def test_the_command_starts_both_the_extension_runs_a_cell_on_them_and_ctrl_c_leaves_nothing(
    running: tuple[subprocess.Popen[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proc, home = running
    env_file = home / ENV_FILE
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values, pid = parse_env_file(env_file.read_text())
    assert pid == proc.pid
    assert set(values) == {*SETTINGS} - {"AZURE_STORAGE_ACCOUNT_URL", "BATCHMAGIC_BACKEND"}
    # No secret beyond Azurite's published key and the emulator's local one.
    assert values["AZURE_BATCH_ACCESS_KEY"] == BATCH_KEY and AZURITE_KEY in values["AZURE_STORAGE_CONNECTION_STRING"]
    services = _children(proc.pid)
    assert len(services) >= 2
    ports = [int(values["AZURE_BATCH_ENDPOINT"].rsplit(":", 1)[1])]
    ports.append(
        int(values["AZURE_STORAGE_CONNECTION_STRING"].split("BlobEndpoint=http://127.0.0.1:")[1].split("/")[0])
    )
    assert all(_listening(p) for p in ports)

    # A kernel's environment with no account of its own: `%load_ext batchmagic` loads the file.
    monkeypatch.setenv("BATCHMAGIC_HOME", str(home))
    for name in SETTINGS:
        monkeypatch.setenv(name, "")  # recorded, so that what the extension adds is undone afterwards
        monkeypatch.delenv(name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = Config()
    config.HistoryManager.enabled = False
    config.AzBatch.panel = "none"
    shell = conftest.TestingShell.instance(config=config)
    try:
        shell.run_cell("%load_ext batchmagic")
        assert os.environ["AZURE_BATCH_ENDPOINT"] == values["AZURE_BATCH_ENDPOINT"]
        assert capsys.readouterr().out == (
            f"batchmagic: Azure path on the local Batch emulator {values['AZURE_BATCH_ENDPOINT']} and Azurite "
            "(`batchmagic emulator`)\n"
        )
        shell.run_cell("x = 21")
        shell.run_cell("%%azbatch --name on-the-emulator\ny = x * 2")
        # The process executor pulls no image: its placeholder is not checked, and nothing is said about it.
        assert "could not check" not in capsys.readouterr().err
        assert shell.user_ns["y"] == 42
        run = shell.user_ns["_azbatch"]
        assert run.status == "done" and run.backend.name == "azure"
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential

        batch = BatchClient(values["AZURE_BATCH_ENDPOINT"], AzureNamedKeyCredential("devbatch", BATCH_KEY))
        assert [j.id for j in batch.list_jobs() if j.id.startswith("on-the-emulator-")]  # it ran as a Batch job
    finally:
        shell.extension_manager.unload_extension("batchmagic")
        conftest.TestingShell.clear_instance()

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not env_file.exists()
    assert not any(Path(f"/proc/{pid}").exists() for pid in services), "a service outlived the command"
    assert not any(_listening(p) for p in ports)


def test_a_command_after_dashes_runs_with_the_settings_and_both_stop_when_it_ends(tmp_path: Path) -> None:
    azurite_binary()
    home = tmp_path / "bmhome"
    script = (
        "import os, sys; from azure.storage.blob import BlobServiceClient as B; "
        "B.from_connection_string(os.environ['AZURE_STORAGE_CONNECTION_STRING']).create_container('from-the-command'); "
        "print(os.environ['AZURE_BATCH_ENDPOINT']); sys.exit(3)"
    )
    done = subprocess.run(
        [*CLI, "--", sys.executable, "-c", script], env=_clean_env(home), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stderr  # the command's own exit code
    endpoint = done.stdout.strip().splitlines()[-1]
    assert endpoint.startswith("http://127.0.0.1:")
    assert not _listening(int(endpoint.rsplit(":", 1)[1]))
    assert not (home / ENV_FILE).exists()


def test_without_azurite_it_says_how_to_install_it(tmp_path: Path) -> None:
    env = {**_clean_env(tmp_path / "bmhome"), "PATH": "/usr/bin:/bin"}
    code = "import batchmagic.sandbox as s, pathlib, sys; s._CHECKOUT = pathlib.Path('/nonexistent'); "
    code += "from batchmagic.cli import main; sys.exit(main(['emulator']))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "batchmagic: Azurite is not installed: "
        "run `npm install` in the batchmagic checkout (or `npm install -g azurite`)"
    )


@pytest.mark.slow
def test_make_quickstart_azure_runs_the_azure_notebook_on_the_emulators(tmp_path: Path) -> None:
    # What `make quickstart-azure` runs, with the executed notebook written to the test's directory.
    azurite_binary()
    out = tmp_path / "azure.out.ipynb"
    jupyter = [
        sys.executable,
        "-m",
        "jupyter",
        "execute",
        str(ROOT / "notebooks" / "azure.ipynb"),
        "--output",
        str(out),
    ]
    done = subprocess.run(
        [*CLI, "--", *jupyter], env=_clean_env(tmp_path / "bmhome"), capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stderr
    import nbformat

    nb = nbformat.read(out, as_version=4)
    printed = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" and "%%azbatch" in c.source for o in c.outputs
    )
    assert "trained: final loss 0.01" in printed
    assert not (tmp_path / "bmhome" / ENV_FILE).exists()


def test_killed_outright_it_still_leaves_no_service_running(
    running: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, home = running
    services = _children(proc.pid)
    assert len(services) >= 2
    data = {_data_dir(pid) for pid in services} - {None}
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in services):
        assert time.monotonic() < deadline, "a service outlived its command"
        time.sleep(0.2)
    for path in data:  # what a killed command cannot remove itself: its services' temporary data
        shutil.rmtree(path, ignore_errors=True)


def _data_dir(pid: int) -> Path | None:
    """The temporary directory a service of `batchmagic emulator` keeps its data in (from its arguments)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for flag in (b"--location", b"--workdir"):
        if flag in args:
            return Path(args[args.index(flag) + 1].decode()).parent
    return None


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
