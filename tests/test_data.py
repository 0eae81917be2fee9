"""--input and --output: on the local backend, and through the Batch emulator and Azurite."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from batchmagic.errors import ConfigError
from batchmagic.package.inputs import parse_input, parse_output
from tests.support.settings import azure_session_fixture

CHECKSUM_CELL = """\
import hashlib, pathlib
digests = {p.as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(pathlib.Path("inputs").rglob("*")) if p.is_file()}
pathlib.Path("model").mkdir()
pathlib.Path("model/weights.bin").write_bytes(bytes(range(256)) * 1000)
pathlib.Path("model/notes.txt").write_text("trained")
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "dataset"
    (root / "part").mkdir(parents=True)
    (root / "train.bin").write_bytes(os.urandom(20_000_000))  # several ranged requests
    (root / "part" / "labels.csv").write_text("id,label\n1,cat\n")
    return root


def test_parse_input_and_output():
    assert parse_input("az://data/train/:inputs/train").dest == "inputs/train"
    assert parse_input("az://data/train/part-0.csv").dest == "part-0.csv"
    for bad in ("az://data/x:../up", "az://data/x:/abs"):
        with pytest.raises(ConfigError, match="outside the task's working directory"):
            parse_input(bad)
    with pytest.raises(ConfigError, match="is not az://container/prefix"):
        parse_input("az://onlycontainer")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_input("./no/such/file")
    with pytest.raises(ConfigError, match="relative to the working directory"):
        parse_output("/etc/*")


def test_local_input_output_and_no_second_upload(shell, dataset, tmp_path):
    shell.run_cell(f"%%azbatch --input {dataset}:inputs --output model/* --output missing/*\n{CHECKSUM_CELL}")
    run = shell.user_ns["_azbatch"]
    assert shell.user_ns["digests"] == {
        "inputs/part/labels.csv": sha((dataset / "part" / "labels.csv").read_bytes()),
        "inputs/train.bin": sha((dataset / "train.bin").read_bytes()),
    }
    assert run.uploaded_input_bytes == 20_000_000 + 15
    assert sorted(run.files) == [("model/notes.txt", 7), ("model/weights.bin", 256_000)]
    paths = run.download(tmp_path / "got")
    assert (tmp_path / "got/model/weights.bin").read_bytes() == bytes(range(256)) * 1000 and len(paths) == 2
    count = "import pathlib\nn = len(list(pathlib.Path('inputs').rglob('*')))"
    shell.run_cell(f"%%azbatch --input {dataset}:inputs\n{count}")
    assert shell.user_ns["_azbatch"].uploaded_input_bytes == 0 and shell.user_ns["n"] == 3


def test_outputs_are_uploaded_when_the_cell_fails(shell, tmp_path):
    with pytest.raises(Exception, match="ZeroDivisionError"):
        shell.run_cell("%%azbatch --output debug.txt\nopen('debug.txt', 'w').write('state at failure')\n1 / 0")
    run = shell.user_ns["_azbatch"]
    run.download(tmp_path / "dbg")
    assert (tmp_path / "dbg/debug.txt").read_text() == "state at failure"


def test_unmatched_output_glob_is_a_warning(shell, capsys):
    shell.run_cell("%%azbatch --output 'nothing/*.pt'\nx = 1")
    assert "--output 'nothing/*.pt' matched no file" in capsys.readouterr().err and shell.user_ns["x"] == 1


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--input ./missing.csv", "does not exist"), ("--input az://c/p:../x", "outside the task's working directory")],
)
def test_bad_inputs_are_one_line(shell, home, flag, message):
    with pytest.raises(UsageError, match=message):
        shell.run_cell(f"%%azbatch {flag}\nx = 1")
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


# --- through Azurite and the emulator ---


azure_session = azure_session_fixture("data")


def test_inputs_outputs_through_blob_storage(azure_session, azurite, dataset, tmp_path, monkeypatch):
    session, _emu = azure_session
    monkeypatch.chdir(tmp_path)  # the files the cell writes come back into the working directory
    service = azurite.service()
    container = service.get_container_client("training")
    if not container.exists():
        container.create_container()
    remote = os.urandom(30_000_000)
    container.upload_blob("sets/v1/big.bin", remote, overwrite=True)
    container.upload_blob("sets/v1/meta/info.json", b"{}", overwrite=True)
    run = session.submit(
        CHECKSUM_CELL, {}, backend="azure",
        inputs=["az://training/sets/v1:inputs/remote", f"{dataset}:inputs/local"], output_files=["model/*"],
    )  # fmt: skip
    outputs = run.wait(timeout=120)
    assert outputs["digests"] == {
        "inputs/local/part/labels.csv": sha((dataset / "part" / "labels.csv").read_bytes()),
        "inputs/local/train.bin": sha((dataset / "train.bin").read_bytes()),
        "inputs/remote/big.bin": sha(remote),
        "inputs/remote/meta/info.json": sha(b"{}"),
    }
    assert run.uploaded_input_bytes == 20_000_015  # the local data; the az:// blobs were already there
    run.download(tmp_path / "got")
    assert (tmp_path / "got/model/weights.bin").read_bytes() == bytes(range(256)) * 1000
    again = session.submit("x = 1", {}, backend="azure", inputs=[f"{dataset}:inputs/local"])
    again.wait(timeout=120)
    assert again.uploaded_input_bytes == 0


def test_missing_az_path_is_one_line_before_the_pool(azure_session):
    session, emu = azure_session
    with pytest.raises(ConfigError, match="az://training/nope: no blob there"):
        session.submit("x = 1", {}, backend="azure", inputs=["az://training/nope"])
    assert [r for r in emu.requests() if r["method"] == "POST" and r["path"] == "/jobs"] == []


@pytest.mark.slow  # a gigabyte through Azurite, which is CPU-bound on 2 cores
def test_one_gigabyte_input_is_checksummed_in_the_task(azure_session, azurite, tmp_path):
    session, _emu = azure_session
    big = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(big, "wb") as f:
        for _ in range(64):
            chunk = os.urandom(16 << 20)
            digest.update(chunk)
            f.write(chunk)
    container = azurite.service().get_container_client("gigabyte")
    if not container.exists():
        container.create_container()
    with open(big, "rb") as f:
        container.upload_blob("blob.bin", f, overwrite=True, max_concurrency=8)
    cell = (
        "import hashlib\nh = hashlib.sha256()\nwith open('data.bin', 'rb') as f:\n"
        "    while chunk := f.read(1 << 24):\n        h.update(chunk)\ndigest = h.hexdigest()"
    )
    run = session.submit(cell, {}, backend="azure", inputs=["az://gigabyte/blob.bin:data.bin"], outputs=["digest"])
    assert run.wait(timeout=600)["digest"] == digest.hexdigest()
    assert any(span.phase.value == "running" for span in run.state().phases)


def test_batchmagic_data_reads_blobs_with_the_runs_own_sas(azure_session, azurite, monkeypatch):
    session, emu = azure_session
    container = azurite.service().get_container_client("tables")
    if not container.exists():
        container.create_container()
    container.upload_blob("iris/train.csv", b"a,b\n1,2\n3,4\n", overwrite=True)
    cell = (
        "from batchmagic import data\n"
        "df = data.read_csv('az://tables/iris/train.csv')\n"
        "total = int(df.a.sum() + df.b.sum())\n"
        "try:\n"
        "    data.read_bytes('az://tables/' + 'iris/train.csv'.upper())\n"
        "except PermissionError as err:\n"
        "    refused = str(err)\n"
    )
    outputs = session.submit(cell, {}, backend="azure").wait(timeout=120)
    assert outputs["total"] == 10
    assert "write the az:// path literally in the cell" in outputs["refused"]
    (task,) = [r for r in emu.requests() if r["method"] == "POST" and r["path"].endswith("/tasks")]
    assert "AccountKey" not in json.dumps(task["body"])
    # In the notebook itself, the user's own account is used.
    from batchmagic import data

    assert data.read_bytes("az://tables/iris/train.csv") == b"a,b\n1,2\n3,4\n"


def test_az_paths_are_the_literals_of_the_cell():
    from batchmagic.data import az_paths

    cell = "x = read('az://data/a.csv')\ny = 'az://data/a.csv'\nz = f'az://data/{n}.csv'\nw = 'az://Bad_Name/x'"
    assert az_paths(cell) == ["az://data/a.csv"]


def test_inputs_bigger_than_the_vms_disk_are_refused_before_anything_moves(azure_session, azurite):
    session, emu = azure_session
    container = azurite.service().get_container_client("huge")
    if not container.exists():
        container.create_container()
    # A sparse 20 GiB blob: Azurite stores a page blob's unwritten pages as nothing.
    container.get_blob_client("disk.img").create_page_blob(size=20 << 30)
    with pytest.raises(ConfigError, match=r"20\.0 GiB, more than the 16 GiB temporary disk of Standard_D2s_v3"):
        session.submit("x = 1", {}, backend="azure", vm_size="Standard_D2s_v3", inputs=["az://huge/disk.img"])
    assert [r for r in emu.requests() if r["method"] == "POST" and r["path"] == "/jobs"] == []
