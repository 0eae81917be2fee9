"""Shared fixtures: a real IPython shell that re-raises, an isolated BATCHMAGIC_HOME, and the one Azurite of the
whole test run."""

from __future__ import annotations

import atexit
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from tests.support.azurite import RunningAzurite, start_azurite


class TestingShell(InteractiveShell):
    """An InteractiveShell whose run_cell raises the cell's error (jupysql's TestingShell).

    IPython registers each shell's ``atexit_operations``, which resets its namespace and runs a full garbage
    collection: with a shell per test, hundreds of collections of the whole run's heap kept pytest from
    exiting for minutes after its summary (and the registrations kept every shell alive). A test's shell
    ends with its test."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        atexit.unregister(self.atexit_operations)

    def run_cell(self, raw_cell: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = super().run_cell(raw_cell, *args, **kwargs)
        result.raise_error()
        return result


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh BATCHMAGIC_HOME, and no Azure settings leaking in from the machine."""
    path = tmp_path / "bmhome"
    monkeypatch.setenv("BATCHMAGIC_HOME", str(path))
    for var in ("BATCHMAGIC_BACKEND", "AZURE_BATCH_ENDPOINT", "AZURE_BATCH_ACCOUNT", "AZURE_BATCH_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    return path


@pytest.fixture
def shell(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestingShell]:
    """A real InteractiveShell with batchmagic loaded, history off, text panel."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = Config()
    config.HistoryManager.enabled = False
    ip = TestingShell.instance(config=config)
    ip.run_cell("%load_ext batchmagic")
    yield ip
    ip.run_line_magic("azbatch_teardown", "")
    ip.extension_manager.unload_extension("batchmagic")
    TestingShell.clear_instance()


@pytest.fixture(scope="session")
def azurite_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAzurite]:
    """One Azurite for the whole test run, started when a test first needs it (instead of one per module,
    which piled up until the run ended). Each test uses a container or prefix of its own (``use_azure``
    makes one per test); tests that stop or restart Azurite on purpose start their own."""
    with start_azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running


@pytest.fixture(scope="session")
def azurite(azurite_session: RunningAzurite) -> RunningAzurite:
    """The session's Azurite (see ``azurite_session``)."""
    return azurite_session
