"""A store that heals and can be cleaned: --input files are copies (never links to the original), an
altered stored copy is stored again instead of failing the run, and ``batchmagic store`` shows the store
by kind and frees what no live run needs (``--prune``), through the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchmagic.api import Session
from batchmagic.protocol import Layout, sha256_file
from batchmagic.run import upkeep
from batchmagic.run.upkeep import kind_of, prunable, run_time, usage
from batchmagic.storage import copy_file
from tests.support.azurite import RunningAzurite, azurite_fixture
from tests.support.emulator import start_emulator, wait_for
from tests.support.settings import use_azure

ROOT = Path(__file__).resolve().parents[1]
COUNT = "n = len(open('data.csv').read().splitlines())"


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATCHMAGIC_HOME": str(home), "PYTHONPATH": str(ROOT), "BATCHMAGIC_BACKEND": "local"}
    return subprocess.run(
        [sys.executable, "-m", "batchmagic.cli", "store", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def session(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    work = tmp_path / "nb"
    work.mkdir()
    monkeypatch.chdir(work)
    s = Session()
    yield s
    s.teardown()


def stored(home: Path, path: Path) -> Path:
    return home / Layout.input(sha256_file(path))


def test_an_input_is_a_copy_and_an_altered_copy_heals(session, home, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a\n1\n2\n")
    run = session.submit(COUNT, {}, backend="local", inputs=[f"{data}:data.csv"], folder="")
    assert run.wait(timeout=60)["n"] == 3
    copy = stored(home, data)
    assert copy.stat().st_ino != data.stat().st_ino and copy.stat().st_nlink == 1  # not a hard link

    with open(data, "a") as f:  # an ordinary edit of the original: the stored copy is untouched
        f.write("3\n")
    assert sha256_file(copy) == copy.name
    assert session.submit(COUNT, {}, backend="local", inputs=[f"{data}:data.csv"], folder="").wait(timeout=60)["n"] == 4

    altered = stored(home, data)
    with open(altered, "a") as f:  # someone edits the store itself: the next run stores it again
        f.write("junk\n")
    run = session.submit(COUNT, {}, backend="local", inputs=[f"{data}:data.csv"], folder="")
    assert run.wait(timeout=60)["n"] == 4 and run.uploaded_input_bytes == data.stat().st_size
    assert sha256_file(altered) == altered.name

    same_size = bytearray(altered.read_bytes())  # same size, other bytes: its time gives it away
    same_size[0] ^= 1
    altered.write_bytes(bytes(same_size))
    assert session.submit(COUNT, {}, backend="local", inputs=[f"{data}:data.csv"], folder="").wait(timeout=60)["n"] == 4
    assert sha256_file(altered) == altered.name


def test_copy_file_is_independent_of_its_source(tmp_path):
    source, target = tmp_path / "a.bin", tmp_path / "b.bin"
    source.write_bytes(b"x" * 100_000)
    copy_file(source, target)
    with open(source, "ab") as f:
        f.write(b"more")
    assert target.read_bytes() == b"x" * 100_000


def test_kinds_and_what_may_go():
    run = "run-20261201-101010-abcdef"
    live = "live-20261201-101010-abcdef"
    assert run_time(run) == pytest.approx(1796119810.0) and run_time("oddly-named") == 0.0
    keys = [
        (f"runs/{run}/bundle", 10),
        (f"runs/{run}/task-0/spec.json", 1),
        (f"runs/{run}/task-0/output.log", 2),
        (f"runs/{run}/task-0/result", 3),
        (f"runs/{run}/outputs.ipynb", 4),
        (f"runs/{run}/task-0/outputs/model/w.bin", 5),
        (f"runs/{live}/bundle", 6),
        ("inputs/sha256/" + "a" * 64, 100),
        ("inputs/sha256/" + "b" * 64, 200),
        ("objects/sha256/" + "c" * 64, 300),
        ("ledger.jsonl", 7),
    ]
    assert [kind_of(k) for k, _ in keys[:6]] == ["bundles", "specs", "logs", "results", "records", "files"]
    held = usage(keys)
    assert held.runs == 2 and held.sizes["inputs"] == 300 and held.sizes["other"] == 7 and held.total == 638
    now = run_time(run) + 7200
    out = prunable(keys, {live}, {"inputs/sha256/" + "a" * 64}, {}, now=now)
    assert out.runs == {run: 25} and out.kept_runs == 1
    assert set(out.content) == {"inputs/sha256/" + "b" * 64, "objects/sha256/" + "c" * 64}
    assert prunable(keys, set(), set(), {}, now=run_time(run) + 60).runs == {}  # too young: kept


def test_the_store_command_shows_and_prunes_what_no_live_run_needs(session, home, tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("a\n1\n")
    used = tmp_path / "used.csv"
    used.write_text("a\n1\n2\n3\n")
    finished = session.submit(COUNT, {}, backend="local", inputs=[f"{old}:data.csv"], folder="")
    finished.wait(timeout=60)
    time.sleep(1.1)  # run ids have a resolution of a second
    live = session.submit(
        "import time\ntime.sleep(6)\n" + COUNT, {}, backend="local", inputs=[f"{used}:data.csv"], folder=""
    )
    wait_for(lambda: live.poll() or live.status == "running", timeout=30)

    shown = cli(home)
    assert shown.returncode == 0, shown.stderr
    assert str(home) in shown.stdout and "in 2 runs' data" in shown.stdout
    for kind in ("inputs", "bundles", "specs", "logs", "results", "records"):
        assert f"  {kind} " in shown.stdout

    kept = cli(home, "--prune")  # everything is younger than the default hour: nothing goes
    assert kept.returncode == 0 and "freed 0 B" in kept.stdout
    pruned = cli(home, "--prune", "--older-than", "0s")
    assert pruned.returncode == 0, pruned.stderr
    assert "the data of 1 finished runs and 1 inputs" in pruned.stdout
    assert not (home / "runs" / finished.id).exists() and not stored(home, old).exists()
    assert (home / "runs" / live.id).exists() and stored(home, used).exists()
    assert live.wait(timeout=60)["n"] == 4  # the live run had all it needed
    bad = cli(home, "--prune", "--older-than", "soon")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--older-than 'soon'" in bad.stderr


def test_the_store_is_trimmed_to_its_limit_after_a_run(session, home, tmp_path, monkeypatch):
    monkeypatch.setattr(upkeep, "GRACE", 0.0)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(300_000))
    first = session.submit("x = 1", {}, backend="local", inputs=[f"{big}:big.bin"], folder="")
    first.wait(timeout=60)
    assert stored(home, big).exists()
    time.sleep(1.1)
    settings = session.settings().with_values(store_limit=100_000)
    second = session.submit("y = 2", {}, backend="local", settings=settings, folder="")
    second.wait(timeout=60)
    wait_for(lambda: not stored(home, big).exists(), timeout=10)  # the oldest went first
    assert not (home / "runs" / first.id).exists()


# --- the same on Blob Storage (Azurite), with the Batch emulator ---

azurite = azurite_fixture()


@pytest.fixture
def azure_session(monkeypatch, home, tmp_path, azurite: RunningAzurite):
    with start_emulator(tmp_path / "batch", allocation_delay=0.1) as emu:
        container = use_azure(monkeypatch, emu, azurite, prefix="store")
        monkeypatch.chdir(tmp_path)
        session = Session()
        yield session, emu, azurite, container
        session.teardown()


def test_on_blob_storage_a_cut_input_heals_and_the_store_command_prunes(azure_session, home, tmp_path):
    session, emu, azurite, container = azure_session
    data = tmp_path / "data.csv"
    data.write_text("a\n1\n2\n")
    first = session.submit(COUNT, {}, backend="azure", inputs=[f"{data}:data.csv"], folder="")
    assert first.wait(timeout=120)["n"] == 3
    key = Layout.input(sha256_file(data))
    blobs = azurite.service().get_container_client(container)
    blobs.upload_blob(key, b"a\n1", overwrite=True)  # a cut upload of an older client: the wrong size
    again = session.submit(COUNT, {}, backend="azure", inputs=[f"{data}:data.csv"], folder="")
    assert again.wait(timeout=120)["n"] == 3 and again.uploaded_input_bytes == data.stat().st_size
    assert blobs.get_blob_client(key).get_blob_properties().size == data.stat().st_size

    env = dict(os.environ)
    shown = subprocess.run(
        [sys.executable, "-m", "batchmagic.cli", "store", "--backend", "azure"],
        capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=120, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert container in shown.stdout and "in 2 runs' data" in shown.stdout and "  inputs " in shown.stdout
    pruned = subprocess.run(
        [sys.executable, "-m", "batchmagic.cli", "store", "--backend", "azure", "--prune", "--older-than", "0s"],
        capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=120, check=False,
    )  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    assert "the data of 2 finished runs and 1 inputs" in pruned.stdout
    assert not list(blobs.list_blobs(name_starts_with="runs/")) and not blobs.get_blob_client(key).exists()
    assert not azurite.service().get_container_client(first.outbox.container_name).exists()
