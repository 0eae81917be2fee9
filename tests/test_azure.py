"""%%azbatch on Azure Batch, through the real parts: the Batch emulator (spoken to by the unmodified
azure-batch SDK over HTTP) and Azurite (Blob Storage, spoken to by azure-storage-blob)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from batchmagic import RemoteError
from batchmagic.errors import RunFailed
from tests.support.azurite import KEY as STORAGE_KEY
from tests.support.azurite import RunningAzurite
from tests.support.emulator import RunningEmulator, start_emulator, wait_for
from tests.support.settings import use_azure

IMAGE = "127.0.0.1:5000/batchmagic/train:env-test"
REGISTRY_PASSWORD = "registry-pass-9f3a"


@pytest.fixture
def emulator(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningEmulator]:
    options = getattr(request, "param", {})
    with start_emulator(tmp_path / "batch", allocation_delay=0.3, **options) as emu:
        yield emu


@pytest.fixture
def azure_env(monkeypatch, home, emulator: RunningEmulator, azurite: RunningAzurite) -> RunningEmulator:
    use_azure(monkeypatch, emulator, azurite, prefix="bm", image=IMAGE)
    monkeypatch.setenv("BATCHMAGIC_REGISTRY_USERNAME", "trainer")
    monkeypatch.setenv("BATCHMAGIC_REGISTRY_PASSWORD", REGISTRY_PASSWORD)
    return emulator


def active_jobs(emu: RunningEmulator) -> list[str]:
    return [j.id for j in emu.client().list_jobs() if str(getattr(j.state, "value", j.state)) == "active"]


def assert_nothing_left(emu: RunningEmulator) -> None:
    """Every scenario ends with zero pools and zero active jobs."""
    client = emu.client()
    wait_for(lambda: not list(client.list_pools()), timeout=20)
    assert active_jobs(emu) == []


def requests_to(emu: RunningEmulator, method: str, pattern: str) -> list[dict]:
    return [r for r in emu.requests() if r["method"] == method and re.fullmatch(pattern, r["path"])]


def test_cell_runs_on_batch_and_results_come_back(azure_env, shell, azurite, capsys):
    shell.run_cell(
        "import pandas as pd\ndf = pd.DataFrame({'x': range(1000)}); alpha = 0.1\ndef train(d, a): return d.x.sum() * a"
    )
    shell.run_cell("%%azbatch --vm Standard_E32_v3 --name e2e\nmodel = train(df, alpha)\nprint('trained', model)")
    assert shell.user_ns["model"] == pytest.approx(49950.0)
    out, err = capsys.readouterr()
    assert "trained 49950.0" in out
    run = shell.user_ns["_azbatch"]
    phases = [span.phase.value for span in run.state().phases]
    assert {"allocating nodes", "node starting"} & set(phases) and phases[-1] == "done"
    assert "e2e [azure, Standard_E32_v3] done" in err

    # What Batch was asked for: a job on an auto pool whose lifetime is the job's.
    (create,) = requests_to(azure_env, "POST", "/jobs")
    job = create["body"]
    auto = job["poolInfo"]["autoPoolSpecification"]
    assert auto["poolLifetimeOption"] == "job" and auto["keepAlive"] is False
    pool = auto["pool"]
    assert pool["vmSize"] == "Standard_E32_v3" and pool["targetDedicatedNodes"] == 1
    containers = pool["virtualMachineConfiguration"]["containerConfiguration"]
    assert containers["type"] == "dockerCompatible" and containers["containerImageNames"] == [IMAGE]
    assert containers["containerRegistries"][0]["registryServer"] == "127.0.0.1:5000"
    assert job["constraints"]["maxWallClockTime"] == "P1D"  # --timeout default 24h, as the SDK writes it
    tags = {m["name"]: m["value"] for m in job["metadata"]}
    assert tags["created-by"] == "batchmagic" and tags["run-id"] == run.id and tags["ledger-id"]
    (patch,) = requests_to(azure_env, "PATCH", f"/jobs/{run.id}")
    assert patch["body"] == {"onAllTasksComplete": "terminatejob"}
    (task,) = requests_to(azure_env, "POST", f"/jobs/{run.id}/tasks")
    body = task["body"]
    assert body["commandLine"] == "python3 -P -m batchmagic.runner --spec spec.json"
    assert body["containerSettings"]["imageName"] == IMAGE
    assert body["resourceFiles"][0]["filePath"] == "spec.json" and "sig=" in body["resourceFiles"][0]["httpUrl"]
    assert "environmentSettings" not in body  # no --env given, and secrets never go there
    assert body["outputFiles"][0]["destination"]["container"]["path"] == f"runs/{run.id}/batch/task-0"

    # Run data in Blob Storage; Batch's own stdout/stderr in the run's own container, the only one the
    # task may write anywhere in (its write-only SAS reaches no other run, no bundle, no input).
    names = azurite.blob_names(run.store.container_name, f"runs/{run.id}/")
    for suffix in ("bundle", "task-0/spec.json", "task-0/output.log", "task-0/result"):
        assert f"runs/{run.id}/{suffix}" in names
    outbox = run.outbox.container_name
    assert (
        outbox != run.store.container_name
        and f"/{outbox}?" in body["outputFiles"][0]["destination"]["container"]["containerUrl"]
    )
    assert f"runs/{run.id}/batch/task-0/stdout.txt" in azurite.blob_names(outbox)
    assert_nothing_left(azure_env)


def test_poll_ticks_cost_a_fixed_number_of_calls(azure_env, shell):
    shell.run_cell("%%azbatch\nimport time\ntime.sleep(4)\nx = 1")
    run = shell.user_ns["_azbatch"]
    job_reads = requests_to(azure_env, "GET", f"/jobs/{run.id}")
    ticks = run.ticks
    assert len(job_reads) == ticks  # one job read a tick...
    reads = [r for r in azure_env.requests() if r["method"] == "GET" and run.id in r["path"]]
    pool_reads = [r for r in azure_env.requests() if r["method"] == "GET" and r["path"].startswith("/pools/")]
    assert len(reads) + len(pool_reads) <= 4 * ticks  # ...and at most four calls in all
    for request in reads + pool_reads:
        if not request["path"].endswith("/nodes"):
            assert "$select" in request["query"], request["path"]


def test_remote_exception(azure_env, shell):
    shell.run_cell("x = 5")
    with pytest.raises(RemoteError) as info:
        shell.run_cell("%%azbatch\nx = 6\ny = 1 / (x - 6)")
    assert info.value.ename == "ZeroDivisionError"
    assert "y = 1 / (x - 6)" in "\n".join(info.value._render_traceback_())
    assert shell.user_ns["x"] == 6 and "y" not in shell.user_ns  # as in the notebook: `x = 6` ran first
    assert_nothing_left(azure_env)


@pytest.mark.parametrize("emulator", [{"core_quota": 8}], indirect=True)
def test_quota_exceeded_is_reported_within_two_ticks(azure_env, shell):
    with pytest.raises(RunFailed) as info:
        shell.run_cell("%%azbatch --vm Standard_E32_v3\nx = 1")
    message = str(info.value)
    assert "AccountCoreQuotaReached" in message and "32 dedicated cores" in message
    assert "--low-priority" in message and "quota increase" in message
    run = shell.magics_manager.registry["AzBatch"].session.runs[-1]
    # The pool is steady with its resize error by the first tick (allocation takes 0.3 s).
    assert run.ticks <= 2
    assert_nothing_left(azure_env)


def test_timeout_is_one_line_and_the_pool_goes(azure_env, shell):
    with pytest.raises(RunFailed, match="--timeout of 3s"):
        shell.run_cell("%%azbatch --timeout 3s\nimport time\ntime.sleep(60)")
    assert_nothing_left(azure_env)


def test_teardown_ends_jobs_pools_and_blobs(azure_env, shell, azurite, capsys):
    magics = shell.magics_manager.registry["AzBatch"]
    run = magics.session.submit(
        "import time\ntime.sleep(120)",
        {},
        backend="azure",
        settings=magics.settings(),
        vm_size="Standard_D2s_v3",
    )
    wait_for(lambda: run.poll() or run.status == "running", timeout=20)
    assert active_jobs(azure_env) == [run.id]
    capsys.readouterr()
    shell.run_cell("%azbatch_teardown --blobs")
    out = capsys.readouterr().out
    assert f"removed Azure Batch job {run.id} and its auto pool bm_" in out
    assert "blobs" in out or "files of run data" in out
    assert_nothing_left(azure_env)
    assert azurite.blob_names(run.store.container_name, f"runs/{run.id}/") == []
    assert not azurite.service().get_container_client(run.outbox.container_name).exists()
    shell.run_cell("%azbatch_teardown")
    assert "nothing to tear down" in capsys.readouterr().out


def test_teardown_all_finds_what_other_kernels_left(azure_env, shell, azurite, capsys):
    from batchmagic.api import Session

    other = Session()  # another kernel
    magics = shell.magics_manager.registry["AzBatch"]
    left = other.submit(
        "import time\ntime.sleep(120)",
        {},
        backend="azure",
        settings=magics.settings(),
        vm_size="Standard_D2s_v3",
    )
    assert active_jobs(azure_env) == [left.id]
    shell.run_cell("%azbatch_teardown")
    assert "nothing to tear down" in capsys.readouterr().out
    assert azurite.service().get_container_client(left.outbox.container_name).exists()
    shell.run_cell("%azbatch_teardown --all --blobs")
    out = capsys.readouterr().out
    assert f"removed Azure Batch job {left.id}" in out and "blobs of run data" in out
    assert not azurite.service().get_container_client(left.outbox.container_name).exists()
    assert azurite.blob_names(left.store.container_name, f"runs/{left.id}/") == []
    assert_nothing_left(azure_env)


# --- bad input: one line each, nothing created in Batch or Blob Storage ---


def assert_nothing_created(emu: RunningEmulator, azurite: RunningAzurite, container: str) -> None:
    assert [r for r in emu.requests() if r["method"] in ("POST", "PUT", "PATCH")] == []
    assert azurite.blob_names(container) == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--vm Standard_Banana", "is not an Azure VM size"),
        ("--nodes 0", "--nodes must be at least 1"),
        ("--timeout 8d", "7-day maximum"),
        ("--retries -1", "--retries must be 0 or more"),
    ],
)
def test_bad_flags(azure_env, shell, azurite, monkeypatch, line, message):
    with pytest.raises(UsageError, match=message) as info:
        shell.run_cell(f"%%azbatch {line}\nx = 1")
    assert "\n" not in str(info.value)
    import os

    assert_nothing_created(azure_env, azurite, os.environ["BATCHMAGIC_CONTAINER"])


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("AZURE_BATCH_ENDPOINT", "", "AZURE_BATCH_ENDPOINT is not set"),
        ("AZURE_BATCH_ACCESS_KEY", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXkxMjM=", "refused the credentials"),
        ("BATCHMAGIC_CONTAINER", "Bad_Name", "breaks Azure's rules"),
        ("BATCHMAGIC_IMAGE", "", "BATCHMAGIC_IMAGE is not set"),
        ("AZURE_STORAGE_CONNECTION_STRING", "", "no Blob Storage configured"),
    ],
)
def test_bad_settings(azure_env, shell, azurite, monkeypatch, var, value, message):
    import os

    container = os.environ["BATCHMAGIC_CONTAINER"]
    if value:
        monkeypatch.setenv(var, value)
    else:
        monkeypatch.delenv(var)
    with pytest.raises(UsageError, match=message) as info:
        shell.run_cell("%%azbatch --backend azure\nx = 1")
    assert "\n" not in str(info.value)
    assert_nothing_created(azure_env, azurite, container)
    assert not azurite.service().get_container_client(container).exists()


def test_no_secret_in_requests_logs_or_panel(azure_env, shell, azurite, capsys, home):
    shell.run_cell(
        "%%azbatch --env MODE=x\nimport os\nprint('env has', sorted(k for k in os.environ if 'KEY' in k))\ny = 2"
    )
    out, err = capsys.readouterr()
    run = shell.user_ns["_azbatch"]
    secrets = [azure_env.key, STORAGE_KEY, REGISTRY_PASSWORD]
    places = {
        "batch requests": azure_env.record_path.read_text(),
        "emulator log": azure_env.log(),
        "panel and output": out + err,
        "run log": run.logs(),
        "ledger": (home / "ledger.jsonl").read_text(),
    }
    container = azurite.service().get_container_client(run.store.container_name)
    for blob in container.list_blobs():
        places[blob.name] = container.download_blob(blob.name).readall().decode("latin-1")
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"
    assert "AZURE_BATCH_ACCESS_KEY" not in out


def test_storage_that_stops_answering_is_one_line(azure_env, shell, tmp_path, monkeypatch):
    """Blob Storage goes away after the checks: the upload's failure is one line, and nothing is created."""
    from tests.support.azurite import start_azurite

    with start_azurite(tmp_path / "doomed") as doomed:  # its own: the session's Azurite serves other tests
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", doomed.connection_string)
        monkeypatch.setenv("BATCHMAGIC_STORAGE_PATIENCE", "2s")  # the default's retries take about 17 s a request
        magics = shell.magics_manager.registry["AzBatch"]
        backend = magics.session.backend("azure", home=magics.home, **magics.backend_config())
        backend.check_access()  # the preflight passed...
        doomed.process.terminate()  # ...then the storage account stops answering
        doomed.process.wait(10)
        with pytest.raises(RunFailed, match="could not store run .*'s data in http://127.0.0.1") as info:
            magics.session.submit("x = 1", {}, backend=backend)
    assert "\n" not in str(info.value)
    assert [r for r in azure_env.requests() if r["method"] == "POST" and r["path"] == "/jobs"] == []
