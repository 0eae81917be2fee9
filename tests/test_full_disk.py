"""A disk that fills under BATCHMAGIC_HOME (a small tmpfs this test mounts: it runs as root, as in CI):
a submit says so in one line before anything is uploaded; a disk that fills during the upload leaves
nothing in Blob Storage; attach and teardown work on with one warning. The emulator and Azurite."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchmagic.errors import ConfigError, RunFailed
from batchmagic.run.state import Phase
from tests.support.azurite import azurite_fixture
from tests.support.emulator import emulator_fixture
from tests.support.settings import use_azure

azurite = azurite_fixture()
emulator = emulator_fixture(allocation_delay=0.2)


@pytest.fixture
def small_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """BATCHMAGIC_HOME on a 1 MB tmpfs, unmounted afterwards."""
    home = tmp_path / "small"
    home.mkdir()
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the full-disk tests mount a tmpfs: CI runs them as root")
        pytest.skip("mounting a tmpfs needs root (CI runs these as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(home)], check=True)
    monkeypatch.setenv("BATCHMAGIC_HOME", str(home))
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def fill(home: Path, leave: int) -> None:
    """Fill the filesystem of ``home`` until ``leave`` bytes are free."""
    stat = os.statvfs(home)
    free = stat.f_bavail * stat.f_frsize
    with open(home / f"filler-{uuid.uuid4().hex[:6]}", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def blobs_of(run_id: str) -> list[str]:
    from azure.storage.blob import ContainerClient

    client = ContainerClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"], os.environ["BATCHMAGIC_CONTAINER"]
    )
    if not client.exists():
        return []  # not even the container was made
    return [b.name for b in client.list_blobs(name_starts_with=f"runs/{run_id}/" if run_id else "runs/")]


def test_a_full_home_is_one_line_before_anything_is_uploaded(small_home, emulator, azurite, monkeypatch):
    from batchmagic.api import Session

    use_azure(monkeypatch, emulator, azurite, prefix="full")
    fill(small_home, 64 * 1024)
    session = Session()
    with pytest.raises(ConfigError, match=f"BATCHMAGIC_HOME {small_home} is full") as raised:
        session.submit("x = 1", {}, backend="azure", name="full")
    assert "\n" not in str(raised.value)
    assert blobs_of("") == []  # nothing uploaded at all


def test_a_disk_that_fills_during_the_upload_leaves_nothing_uploaded(small_home, emulator, azurite, monkeypatch):
    from batchmagic.api import Session

    use_azure(monkeypatch, emulator, azurite, prefix="fills")
    session = Session()
    seen: list[str] = []

    def on_update(state, records):  # type: ignore[no-untyped-def]
        if state.phase == Phase.UPLOADING and not seen:
            seen.append(state.run_id)
            fill(small_home, 0)  # another program fills the disk while the bundle goes up

    with pytest.raises(RunFailed) as raised:
        session.submit("x = 1", {}, backend="azure", name="fills", on_update=on_update)
    message = str(raised.value)
    assert "\n" not in message and "no space left" in message and "[Errno" not in message, message
    assert "not started" in message and "uploaded files removed" in message, message
    assert seen and blobs_of(seen[0]) == []  # the bundle and the spec (with its SAS URLs) are gone
    assert list(emulator.client().list_jobs()) == []


def test_attach_and_teardown_work_on_a_full_disk(small_home, emulator, azurite, monkeypatch):
    from batchmagic.api import Session

    use_azure(monkeypatch, emulator, azurite, prefix="attachfull")
    first = Session()
    run = first.submit("import time\ntime.sleep(3)\ny = 7", {}, backend="azure", name="keep4")
    fill(small_home, 0)
    other = Session()
    attached = other.attach(run.id)
    assert attached.wait(timeout=180)["y"] == 7
    removed = other.teardown_orphans() + other.teardown()
    assert not any("Errno" in line or line.startswith("nothing of") for line in removed), removed
    with pytest.raises(OSError):  # the disk was full all along
        (small_home / "probe").write_bytes(b"x" * 8192)
    first.teardown()
