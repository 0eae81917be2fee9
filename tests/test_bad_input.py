"""Bad input is one line and creates nothing: flags, settings, capture, sweeps, inputs and images,
through a real InteractiveShell, on the local backend and on Azure (the Batch emulator and Azurite).

Each case asserts the error's class and that it is one line, and that nothing was created: no run
directory, no process left, and on Azure no POST/PUT/PATCH/DELETE the emulator recorded and no blob.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from batchmagic.errors import RunFailed
from tests.support.emulator import RunningEmulator, emulator_fixture
from tests.support.settings import use_azure

emulator = emulator_fixture(scope="module", allocation_delay=0.2)

WRITES = ("POST", "PUT", "PATCH", "DELETE")


def _children() -> set[int]:
    """Processes whose parent is this one (the runners a local run would start)."""
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(entry))
    return found


class World:
    """What a case runs in: the shell, and what it checks was left untouched."""

    def __init__(self, shell: Any, home: Path, backend: str, emu: RunningEmulator | None, az: Any, container: str):
        self.shell = shell
        self.home = home
        self.backend = backend
        self.emu = emu
        self.azurite = az
        self.container = container
        self._requests = len(emu.requests()) if emu else 0
        self._children = _children()

    def assert_nothing_created(self) -> None:
        runs = self.home / "runs"
        assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
        assert _children() <= self._children
        if self.emu is not None:
            writes = [r for r in self.emu.requests()[self._requests :] if r["method"] in WRITES]
            assert writes == [], writes
            assert self.azurite.blob_names(self.container) == []


@pytest.fixture(params=["local", "azure"])
def world(request, home, tmp_path, monkeypatch) -> Iterator[World]:
    """The shell on one backend; Azure's settings point at the module's emulator and Azurite."""
    emu = az = None
    container = ""
    if request.param == "azure":
        emu = request.getfixturevalue("emulator")
        az = request.getfixturevalue("azurite")
        container = use_azure(monkeypatch, emu, az, prefix="bad")
        monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
    shell = request.getfixturevalue("shell")
    yield World(shell, home, request.param, emu, az, container)


@pytest.fixture
def azure_world(request, home, monkeypatch, emulator, azurite) -> Iterator[World]:
    container = use_azure(monkeypatch, emulator, azurite, prefix="bad")
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
    shell = request.getfixturevalue("shell")
    yield World(shell, home, "azure", emulator, azurite, container)


def one_line(world: World, source: str, message: str, error: type[BaseException] = UsageError) -> BaseException:
    with pytest.raises(BaseException) as info:
        world.shell.run_cell(source)
    err = info.value
    assert type(err) is error, f"{type(err).__name__}: {err}"
    text = str(err)
    assert "\n" not in text.strip(), text
    assert re.search(message, text), text
    if hasattr(err, "_render_traceback_"):
        assert len(err._render_traceback_()) == 1
    world.assert_nothing_created()
    return err


# (line, cell, message): the same on both backends.
FLAGS = [
    ("--name 'abc", "x = 1", "unbalanced quote|No closing quotation"),
    ('--name "abc', "x = 1", "No closing quotation"),
    ("--bogus", "x = 1", "unrecognized arguments: --bogus"),
    ("--backend moon", "x = 1", "--backend 'moon' is not one of"),
    ("--timeout soon", "x = 1", "is not a duration"),
    ("--timeout 8d", "x = 1", "7-day maximum"),
    ("--timeout 0", "x = 1", "more than zero"),
    ("--env NOEQUALS", "x = 1", "is not KEY=VALUE"),
    ("--env 1X=2", "x = 1", "is not KEY=VALUE"),
    ("--nodes 0", "x = 1", "--nodes must be at least 1"),
    ("--nodes 100000", "x = 1", "--nodes 100000 is over"),
    ("--nodes many", "x = 1", "invalid int value"),
    ("--retries -1", "x = 1", "--retries must be 0 or more"),
    ("--retries 1000", "x = 1", "--retries 1000 is over"),
    ("--slots-per-node 0", "x = 1", "--slots-per-node must be at least 1"),
    ("--slots-per-node 100000", "x = 1", "--slots-per-node 100000 is over"),
    ("--out nope", "x = 1", "--out names nope"),
    ("--out class", "x = 1", "--out 'class' is not a Python name"),
    ("--out ,", "x = 1", "--out needs at least one name"),
    ("--out-run class", "x = 1", "--out-run 'class' is not a Python name"),
    ("--out-run 1abc", "x = 1", "--out-run '1abc' is not a Python name"),
    ("--sweep class=1,2", "y = 1", "--sweep 'class=1,2' is not name=v1,v2"),
    ("--sweep lr", "y = lr", "is not name=v1,v2"),
    ("--sweep lr=", "y = lr", "has no values"),
    ("--sweep lr=1 --sweep lr=2", "y = lr", "names 'lr' twice"),
    ("--sweep lr=1 --sweep-from rows", "y = lr", "not both"),
    ("--sweep-from nowhere", "y = lr", "no such variable"),
    ("--sweep-from number", "y = lr", "not a list of dicts"),
    ("--sweep-from badrows", "y = lr", "is not a Python identifier"),
    ("--sweep-from emptyrows", "y = 1", "the sweep is empty"),
    ("--nodes 2 --distributed --low-priority", "x = 1", "--distributed needs dedicated nodes"),
    ("--nodes 101 --distributed", "x = 1", "over Azure Batch's limit of 100 nodes for one multi-instance task"),
    ("--nodes 2 --distributed --sweep lr=1,2", "y = lr", "--distributed runs one cell on several nodes"),
    ("--nodes 2 --distributed --slots-per-node 2", "x = 1", "use --procs-per-node K"),
    ("--procs-per-node 2", "x = 1", "--procs-per-node starts several ranks.*add --distributed"),
    ("--nodes 2 --distributed --retries 1", "x = 1", "--retries does not apply to --distributed"),
    ("--distributed --procs-per-node 0", "x = 1", "--procs-per-node must be from 1 to 64"),
    ("--distributed --procs-per-node 65", "x = 1", "--procs-per-node must be from 1 to 64"),
    ("", "   \n", "the cell is empty"),
    ("", "x = (", "syntax error at line 1"),
    ("", "from os.path import *", "cannot be captured reliably"),
    ("", "with lock:\n    y = 1", r"cannot ship `lock`"),
    ("", "_azbatch = 123", "`_azbatch`.*holds the run"),
    ("--out-run handle", "handle = 1", "`handle`.*holds the run"),
    ("--input ./no/such/dir", "x = 1", "does not exist"),
    ("--input az://", "x = 1", "is not az://container/prefix"),
    ("--input data.csv:../up", "x = 1", "outside the task's working directory"),
    ("--output /etc/passwd", "x = 1", "must be a glob relative"),
    ("--requirements no-such-file.txt", "x = 1", "no-such-file.txt"),
    ("--image img:1 --pip tabulate", "x = 1", "drop --requirements/--pip"),
]


@pytest.mark.parametrize(("line", "cell", "message"), FLAGS, ids=[f"{a} | {b}"[:40] for a, b, _ in FLAGS])
def test_flag_is_one_line_and_creates_nothing(world, line, cell, message):
    world.shell.run_cell(
        "import threading\nlock = threading.Lock()\nnumber = 3\nrows = [{'lr': 1}]\n"
        "badrows = [{'not a name': 1}]\nemptyrows = []"
    )
    Path("data.csv").write_text("a\n1\n")
    one_line(world, f"%%azbatch {line}\n{cell}", message)


def test_too_many_sweep_tasks(world, monkeypatch):
    monkeypatch.setenv("BATCHMAGIC_MAX_TASKS", "3")
    world.shell.magics_manager.registry["AzBatch"]._environment = None
    one_line(world, "%%azbatch --sweep a=1,2 --sweep b=1,2\ny = a", "over the limit of 3")


def test_deleted_working_directory(world, tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    os.chdir(gone)
    shutil.rmtree(gone)
    try:
        one_line(world, "%%azbatch\nx = 1", "working directory.* was deleted")
    finally:
        os.chdir(tmp_path)


def test_local_container_flag_needs_local_backend(azure_world):
    one_line(azure_world, "%%azbatch --container\nx = 1", "--container is for --backend local")


def test_local_image_needs_container(shell, home):
    world = World(shell, home, "local", None, None, "")
    one_line(world, "%%azbatch --backend local --image img:1\nx = 1", "needs --container")


# --- settings (Azure) ---

SETTINGS: list[tuple[str, dict[str, str | None], str]] = [
    ("key-not-base64", {"AZURE_BATCH_ACCESS_KEY": "not base64!!"}, "AZURE_BATCH_ACCESS_KEY is not a base64"),
    ("key-refused", {"AZURE_BATCH_ACCESS_KEY": "d3Jvbmcta2V5LXdyb25nLWtleQ=="}, "refused the credentials"),
    ("endpoint-unreachable", {"AZURE_BATCH_ENDPOINT": "http://127.0.0.1:9"}, "cannot reach Azure Batch"),
    ("endpoint-not-url", {"AZURE_BATCH_ENDPOINT": "batch.example.com"}, "is not a URL"),
    ("no-account", {"AZURE_BATCH_ACCOUNT": None}, "AZURE_BATCH_ACCOUNT is not set"),
    ("bad-container", {"BATCHMAGIC_CONTAINER": "Bad_Name"}, "breaks Azure's rules"),
    ("no-image", {"BATCHMAGIC_IMAGE": None}, "BATCHMAGIC_IMAGE is not set"),
    ("max-tasks", {"BATCHMAGIC_MAX_TASKS": "lots"}, "BATCHMAGIC_MAX_TASKS='lots' is not a positive integer"),
    ("max-nodes", {"BATCHMAGIC_MAX_NODES": "-3"}, "BATCHMAGIC_MAX_NODES='-3' is not a positive integer"),
    ("storage-garbage", {"AZURE_STORAGE_CONNECTION_STRING": "nonsense"}, "AZURE_STORAGE_CONNECTION_STRING"),
    ("no-storage", {"AZURE_STORAGE_CONNECTION_STRING": None}, "no Blob Storage configured"),
    # Each node's supervisor binds MASTER_PORT + 1: 65536 does not exist, 6000 is Batch's.
    ("master-port-top", {"BATCHMAGIC_MASTER_PORT": "65535"}, "BATCHMAGIC_MASTER_PORT 65535 cannot be rank 0's port"),
    ("master-port-5999", {"BATCHMAGIC_MASTER_PORT": "5999"}, "other than 5999 and 6000"),
]


def _apply(monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None]) -> None:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@pytest.mark.parametrize(("env", "message"), [s[1:] for s in SETTINGS], ids=[s[0] for s in SETTINGS])
def test_setting_is_one_line_and_creates_nothing(home, monkeypatch, emulator, azurite, request, env, message):
    container = use_azure(monkeypatch, emulator, azurite, prefix="bad")
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
    _apply(monkeypatch, env)
    shell = request.getfixturevalue("shell")
    world = World(shell, home, "azure", emulator, azurite, container)
    one_line(world, "%%azbatch\nx = 1", message)


def test_storage_refusing_its_key_is_one_line(home, monkeypatch, emulator, azurite, request):
    container = use_azure(monkeypatch, emulator, azurite, prefix="bad")
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
    wrong = azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong)
    world = World(request.getfixturevalue("shell"), home, "azure", emulator, azurite, container)
    one_line(world, "%%azbatch\nx = 1", "Blob Storage refused access")


def test_unknown_vm_size(azure_world):
    one_line(azure_world, "%%azbatch --vm Huge\nx = 1", "is not an Azure VM size")


# --- teardown ---

TEARDOWNS: list[tuple[str, dict[str, str | None], str]] = [
    ("unreachable", {"AZURE_BATCH_ENDPOINT": "http://127.0.0.1:9"}, "cannot reach Azure Batch"),
    ("refused", {"AZURE_BATCH_ACCESS_KEY": "d3Jvbmcta2V5LXdyb25nLWtleQ=="}, "refused the credentials"),
    ("not-base64", {"AZURE_BATCH_ACCESS_KEY": "%%%"}, "AZURE_BATCH_ACCESS_KEY is not a base64"),
]


@pytest.mark.parametrize(("env", "message"), [t[1:] for t in TEARDOWNS], ids=[t[0] for t in TEARDOWNS])
def test_teardown_all_is_one_line(home, monkeypatch, emulator, azurite, request, env, message):
    container = use_azure(monkeypatch, emulator, azurite, prefix="bad")
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
    _apply(monkeypatch, env)
    world = World(request.getfixturevalue("shell"), home, "azure", emulator, azurite, container)
    one_line(world, "%azbatch_teardown --all", message)


def test_teardown_all_needs_no_image(home, monkeypatch, emulator, azurite, request, capsys):
    use_azure(monkeypatch, emulator, azurite, prefix="bad")
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
    monkeypatch.delenv("BATCHMAGIC_IMAGE")
    shell = request.getfixturevalue("shell")
    shell.run_cell("%azbatch_teardown --all")
    assert "nothing to tear down" in capsys.readouterr().out


# --- what the cell does ---


def test_sys_exit_is_one_line_run_failed(world):
    err = one_line_run(world, "%%azbatch\nimport sys\nsys.exit(3)")
    assert "sys.exit(3)" in str(err)


def test_sys_exit_zero_is_success(shell):
    shell.run_cell("%%azbatch --backend local\nimport sys\nx = 5\nsys.exit(0)")
    assert shell.user_ns["x"] == 5


def one_line_run(world: World, source: str) -> BaseException:
    with pytest.raises(RunFailed) as info:
        world.shell.run_cell(source)
    err = info.value
    assert "\n" not in str(err) and len(err._render_traceback_()) == 1
    return err
