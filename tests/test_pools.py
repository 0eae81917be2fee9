"""Named pools through the real parts: ``%azbatch_pool`` and ``%%azbatch --pool`` on the Batch emulator
and Azurite, the autoscale formula on the emulator's evaluator (and on the emulator under
``--time-scale``), and the choice of node image."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from batchmagic.api import Session
from batchmagic.backends.azure.nodeimages import SupportedImage, choose_node_image
from batchmagic.backends.azure.poolspec import PoolRequest, autoscale_formula, formula_parameters, scale_to_zero_at
from batchmagic.emulator.autoscale import MetricHistory, PoolFigures, compile_formula, evaluate
from batchmagic.errors import ConfigError
from tests.support.azurite import RunningAzurite
from tests.support.emulator import RunningEmulator, start_emulator, wait_for
from tests.support.settings import use_azure

IMAGE = "127.0.0.1:5000/batchmagic/train:env-test"


@pytest.fixture
def emulator(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningEmulator]:
    options = getattr(request, "param", {})
    with start_emulator(tmp_path / "batch", allocation_delay=0.3, **options) as emu:
        yield emu


@pytest.fixture
def azure_env(monkeypatch, home, emulator: RunningEmulator, azurite: RunningAzurite) -> RunningEmulator:
    use_azure(monkeypatch, emulator, azurite, prefix="bmpool", image=IMAGE)
    return emulator


def requests_to(emu: RunningEmulator, method: str, pattern: str) -> list[dict]:
    return [r for r in emu.requests() if r["method"] == method and re.fullmatch(pattern, r["path"])]


def pool_nodes(emu: RunningEmulator, name: str) -> list[str]:
    return [str(getattr(n.state, "value", n.state)) for n in emu.client().list_nodes(name)]


# --- the node image, from the account's supported images ---

HPC_2204 = SupportedImage(
    "microsoft-dsvm", "ubuntu-hpc", "2204", "batch.node.ubuntu 22.04",
    capabilities=("DockerCompatible", "NvidiaTeslaDriverInstalled"), end_of_life=datetime(2027, 6, 30, tzinfo=UTC),
)  # fmt: skip
HPC_2404 = SupportedImage(
    "microsoft-dsvm", "ubuntu-hpc", "2404", "batch.node.ubuntu 24.04",
    capabilities=("DockerCompatible", "NvidiaTeslaDriverInstalled", "Generation2VMImage"),
)  # fmt: skip
IMAGES = [
    SupportedImage(
        "microsoft-azure-batch", "ubuntu-server-container", "20-04-lts", "batch.node.ubuntu 20.04",
        capabilities=("DockerCompatible", "NvidiaTeslaDriverInstalled"), end_of_life=datetime(2025, 4, 30, tzinfo=UTC),
    ),
    HPC_2204,
    SupportedImage("canonical", "ubuntu-24_04-lts", "server", "batch.node.ubuntu 24.04"),  # no Docker
    HPC_2404,
    SupportedImage(
        "microsoft-dsvm", "ubuntu-hpc", "2404-gen2", "batch.node.ubuntu 24.04", capabilities=("DockerCompatible",)
    ),
    SupportedImage("microsoftwindowsserver", "windowsserver", "2022", "batch.node.windows amd64", os_type="windows",
                   capabilities=("DockerCompatible",)),
]  # fmt: skip
TODAY = date(2026, 12, 1)


def test_node_image_is_the_newest_docker_ubuntu_still_supported():
    chosen = choose_node_image(IMAGES, "Standard_D2s_v3", today=TODAY)
    assert (chosen.offer, chosen.sku, chosen.node_agent_sku) == ("ubuntu-hpc", "2404", "batch.node.ubuntu 24.04")
    # Without 24.04 the 22.04 image serves until its end of life, and not a day after.
    older = [i for i in IMAGES if i.ubuntu != (24, 4)]
    assert choose_node_image(older, "Standard_D2s_v3", today=TODAY).sku == "2204"
    with pytest.raises(ConfigError, match="no Docker-compatible Ubuntu node image that is still supported"):
        choose_node_image(older, "Standard_D2s_v3", today=date(2027, 6, 30))


def test_node_image_for_a_gpu_size_is_gpu_capable():
    newer_plain = SupportedImage(
        "microsoft-azure-batch", "ubuntu-server-container", "26-04-lts", "batch.node.ubuntu 26.04",
        capabilities=("DockerCompatible",),
    )  # fmt: skip
    images = [*IMAGES, newer_plain]
    assert choose_node_image(images, "Standard_D4s_v3", today=TODAY).sku == "26-04-lts"  # newest, CPU size
    gpu = choose_node_image(images, "Standard_NC24ads_A100_v4", today=TODAY)
    assert (gpu.offer, gpu.sku) == ("ubuntu-hpc", "2404")
    with pytest.raises(ConfigError, match=r"with the NVIDIA driver \(NvidiaTeslaDriverInstalled\)"):
        choose_node_image([newer_plain], "Standard_ND96asr_v4", today=TODAY)


def test_node_image_override():
    pick = choose_node_image(IMAGES, "Standard_D2s_v3", today=TODAY, override="microsoft-dsvm:ubuntu-hpc:2204")
    assert (pick.sku, pick.version, pick.node_agent_sku) == ("2204", "latest", "batch.node.ubuntu 22.04")
    custom = choose_node_image(IMAGES, "x", today=TODAY, override="me:mine:1:2.0@batch.node.ubuntu 24.04")
    assert custom.name == "me:mine:1:2.0" and custom.node_agent_sku == "batch.node.ubuntu 24.04"
    for text, message in [
        ("ubuntu-hpc", "is not publisher:offer:sku"),
        ("me:mine:1", "not among the Batch account's supported images; Docker-compatible ones: .*ubuntu-hpc:2404"),
        ("microsoft-azure-batch:ubuntu-server-container:20-04-lts", "support for it ended on 2025-04-30"),
        ("canonical:ubuntu-24_04-lts:server", "not Docker-compatible"),
    ]:
        with pytest.raises(ConfigError, match=message):
            choose_node_image(IMAGES, "Standard_D2s_v3", today=TODAY, override=text)


# --- the autoscale formula, on the emulator's evaluator ---


def test_formula_grows_with_pending_tasks_and_goes_to_zero_after_idle():
    t0 = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    request = PoolRequest("p", "Standard_D2s_v3", max_nodes=3, idle="10m", slots_per_node=2)
    text = autoscale_formula(request, floor=0, mark=t0)
    assert formula_parameters(text) == {
        "max-nodes": "3", "idle": "600", "slots": "2", "floor": "0", "mark": "2026-12-01T14:00:00Z",
        "low-priority": "0",
    }  # fmt: skip
    formula, history = compile_formula(text), MetricHistory()
    now, target = t0.timestamp(), 0

    def after(seconds: float, pending: int) -> int:
        nonlocal now, target
        for _ in range(int(seconds // 30)):
            now += 30
            history.record(now, {"PendingTasks": pending})
        outcome = evaluate(formula, now=now, history=history, pool=PoolFigures(target_dedicated=target))
        assert outcome.error is None, outcome.error
        assert outcome.deallocation == "taskcompletion"
        target = outcome.target_dedicated
        return target

    assert after(0, 0) == 0  # a new pool has no node until a task comes
    assert after(60, 3) == 2  # 3 tasks, 2 slots a node
    assert after(60, 9) == 3  # capped at max-nodes
    assert after(60, 1) == 3  # keeps what it has while busy
    assert after(300, 0) == 3  # idle for 5 of 10 minutes: still warm
    assert after(330, 0) == 0  # idle for 10 minutes: zero

    floor = compile_formula(autoscale_formula(request, floor=2, mark=datetime.fromtimestamp(now, UTC)))
    held = evaluate(floor, now=now + 60, history=history, pool=PoolFigures())
    assert held.target_dedicated == 2  # resize 2: two nodes now...
    gone = evaluate(floor, now=now + 660, history=history, pool=PoolFigures(target_dedicated=2))
    assert gone.target_dedicated == 0  # ...until the idle period after the resize has passed

    spot = PoolRequest("s", "Standard_D2s_v3", max_nodes=2, low_priority=True)
    grown = evaluate(compile_formula(autoscale_formula(spot, floor=1, mark=t0)), now=t0.timestamp(), history=history,
                     pool=PoolFigures())  # fmt: skip
    assert (grown.target_dedicated, grown.target_low_priority) == (0, 1)


def test_scale_to_zero_estimate_is_idle_plus_one_interval():
    done = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    assert scale_to_zero_at(done, 20 * 60, 5 * 60) == datetime(2026, 12, 1, 14, 25, 30, tzinfo=UTC)


# --- bad input: one line each, before anything is created ---


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("create 'bad name'", "is not a pool name"),
        ("create bm_mine --vm Standard_D2s_v3", "auto pools"),
        ("create p --vm Standard_Banana", "is not an Azure VM size"),
        ("create p --max-nodes 0", "--max-nodes must be at least 1"),
        ("create p --idle soon", "--idle 'soon' is not a duration"),
        ("create p --slots-per-node 0", "--slots-per-node must be between 1 and 256"),
        ("create p --max-nodes lots", "invalid int value"),
        ("create p --vm Standard_D2s_v3 --inter-node --max-nodes 101", "--inter-node pools hold at most 100 nodes"),
        ("create p --vm Standard_D2s_v3 --inter-node --low-priority", "dedicated nodes only: drop --low-priority"),
        ("create", "needs the pool's name"),
        ("resize p", "needs a number of nodes"),
        ("resize p -1", "needs a number of nodes"),
        ("resize missing 1", "there is no pool missing"),
        ("delete missing", "there is no pool missing"),
        ("ls extra", "takes no name"),
        ("grow p", "invalid choice"),
    ],
)
def test_bad_pool_commands_are_one_line(azure_env, shell, line, message):
    with pytest.raises(UsageError, match=message) as info:
        shell.run_line_magic("azbatch_pool", line)
    assert "\n" not in str(info.value)
    assert [r for r in azure_env.requests() if r["method"] in ("POST", "PUT", "PATCH")] == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--pool missing", "there is no pool missing: create it with %azbatch_pool create missing"),
        ("--pool 'a b'", "is not a pool name"),
        ("--pool p --nodes 3", "--nodes does not apply to a run on a named pool"),
        ("--pool p --low-priority", "--low-priority does not apply"),
        ("--pool p --backend local", "drop --backend local, or drop --pool"),
    ],
)
def test_bad_pool_flags_are_one_line(azure_env, shell, azurite, line, message):
    with pytest.raises(UsageError, match=message) as info:
        shell.run_cell(f"%%azbatch {line}\nx = 1")
    assert "\n" not in str(info.value)
    assert [r for r in azure_env.requests() if r["method"] in ("POST", "PUT", "PATCH")] == []
    assert azurite.blob_names(os.environ["BATCHMAGIC_CONTAINER"]) == []


# --- named pools on the emulator ---


def test_cells_on_a_named_pool_start_warm_and_leave_it(azure_env, shell, capsys):
    shell.run_line_magic("azbatch_pool", "create warm --vm Standard_D2s_v3 --max-nodes 2 --idle 20m")
    out = capsys.readouterr().out
    assert "created pool warm: standard_d2s_v3, 0 of 0 nodes (max 2), to zero after 20m idle" in out
    (create,) = requests_to(azure_env, "POST", "/pools")
    body = create["body"]
    assert body["enableAutoScale"] is True and body["autoScaleEvaluationInterval"] == "PT05M00S"  # 5 min, the least
    assert "$NodeDeallocationOption = taskcompletion" in body["autoScaleFormula"]
    assert "targetDedicatedNodes" not in body
    vmc = body["virtualMachineConfiguration"]
    assert vmc["imageReference"]["sku"] == "2404" and vmc["nodeAgentSKUId"] == "batch.node.ubuntu 24.04"
    assert vmc["containerConfiguration"]["containerImageNames"] == [IMAGE]  # prefetched by every node
    tags = {m["name"]: m["value"] for m in body["metadata"]}
    assert tags["created-by"] == "batchmagic" and tags["batchmagic-pool"] == "named"
    assert tags["idle-seconds"] == "1200" and tags["max-nodes"] == "2" and tags["ledger-id"] and tags["creator"]

    shell.run_cell("%%azbatch --pool warm --name first\nx = 1")
    first = shell.user_ns["_azbatch"]
    assert shell.user_ns["x"] == 1 and first.vm_size == "standard_d2s_v3"
    assert "scales to zero at about" in first.state().detail

    shell.run_line_magic("config", 'AzBatch.pool = "warm"')  # the trait: cells go to the pool without --pool
    shell.run_cell("%%azbatch --name second\nprint('hello from a warm node')\ny = 2")
    second = shell.user_ns["_azbatch"]
    assert shell.user_ns["y"] == 2
    phases = [span.phase.value for span in second.state().phases]
    assert not {"creating pool", "allocating nodes", "node starting", "pulling image"} & set(phases), phases
    assert re.search(r"pool warm stays warm; scales to zero at about \d\d:\d\d", second.state().detail)

    # One job per run on the pool; no pool was made for them, and their end left it alone.
    jobs = {r["body"]["id"]: r["body"] for r in requests_to(azure_env, "POST", "/jobs")}
    for run in (first, second):
        assert jobs[run.id]["poolInfo"] == {"poolId": "warm"}
        (task,) = requests_to(azure_env, "POST", f"/jobs/{run.id}/tasks")
        assert task["body"]["containerSettings"]["imageName"] == IMAGE
    assert len(requests_to(azure_env, "POST", "/pools")) == 1
    assert azure_env.client().get_pool("warm").state == "active"

    shell.run_line_magic("azbatch_pool", "ls")
    listed = capsys.readouterr().out
    assert re.search(r"warm: standard_d2s_v3, 1 of 1 nodes \(max 2\) \(1 idle\)", listed)
    assert "; cost unknown (no price for standard_d2s_v3 (the Batch account's region is unknown" in listed

    # Teardown leaves the pool and says so; --pools removes it.
    shell.run_line_magic("azbatch_teardown", "")
    out = capsys.readouterr().out
    assert "kept pool warm: standard_d2s_v3" in out and "%azbatch_teardown --pools" in out
    assert azure_env.client().get_pool("warm").state == "active"
    shell.run_line_magic("azbatch_teardown", "--pools")
    assert "removed Azure Batch pool warm (with 1 node of standard_d2s_v3)" in capsys.readouterr().out
    wait_for(lambda: not list(azure_env.client().list_pools()), timeout=30)


def test_a_sweep_spreads_over_the_pool_and_two_sessions_share_it(azure_env, shell, capsys):
    from batchmagic import pools

    magics = shell.magics_manager.registry["AzBatch"]
    settings = magics.settings()
    pools.create_pool("shared", vm_size="Standard_D2s_v3", max_nodes=2, idle="20m", session=magics.session,
                      settings=settings)  # fmt: skip
    shell.run_cell("%%azbatch --pool shared --sweep k=1,2,3,4\nimport time\ntime.sleep(1.5)\nsquare = k * k")
    table = shell.user_ns["_azbatch"].results
    assert sorted(table["square"]) == [1, 4, 9, 16]
    assert table["node"].nunique() == 2  # the pool grew to its two nodes and the tasks went to both

    # Another kernel runs on the same pool at the same time; cancelling its run touches nothing of ours.
    other = Session()
    theirs = other.submit("import time\ntime.sleep(60)", {}, backend="azure", pool="shared", settings=settings)
    ours = magics.session.submit("import time\ntime.sleep(2)\nz = 3", {}, backend="azure", pool="shared",
                                 settings=settings)  # fmt: skip
    wait_for(lambda: theirs.poll() or theirs.status == "running", timeout=60)
    other.teardown()
    assert theirs.status == "cancelled"
    assert ours.wait(timeout=120)["z"] == 3
    assert theirs.id != ours.id and theirs.store.container_name == ours.store.container_name
    assert theirs.outbox.container_name != ours.outbox.container_name
    assert azure_env.client().get_pool("shared").state == "active"
    assert pools.delete_pool("shared", session=magics.session, settings=settings).startswith("Azure Batch pool shared")


@pytest.mark.parametrize("emulator", [{"time_scale": 120}], indirect=True)
def test_pool_grows_with_pending_tasks_and_goes_to_zero_when_idle(azure_env, shell):
    """The formula works in the service, with no batchmagic client: tasks added with the plain SDK grow the
    pool, and it goes to zero once idle. Under --time-scale 120 an emulated minute is half a real second (the
    evaluations, five emulated minutes apart, 2.5 s; the idle period 5 s)."""
    from azure.batch import models as m

    from batchmagic import pools

    magics = shell.magics_manager.registry["AzBatch"]
    pools.create_pool("auto", vm_size="Standard_D2s_v3", max_nodes=3, idle="10m", session=magics.session,
                      settings=magics.settings())  # fmt: skip
    client = azure_env.client()
    assert client.get_pool("auto").target_dedicated_nodes == 0
    client.create_job(m.BatchJobCreateOptions(id="plain", pool_info=m.BatchPoolInfo(pool_id="auto")))
    client.create_tasks("plain", [m.BatchTaskCreateOptions(id=f"t{i}", command_line="sleep 1") for i in range(4)])

    # Four pending tasks, at most three nodes: the next evaluation grows it to three.
    wait_for(lambda: client.get_pool("auto").target_dedicated_nodes == 3, timeout=60, interval=0.2)
    wait_for(lambda: all(str(t.state) in ("completed", "BatchTaskState.COMPLETED") for t in client.list_tasks("plain")),
             timeout=120, interval=0.5)  # fmt: skip
    last_end = max(t.execution_info.end_time for t in client.list_tasks("plain"))

    # Then nothing pending or running: zero nodes after the idle period (in emulated time), no client needed.
    pool = wait_for(lambda: (p := client.get_pool("auto")).target_dedicated_nodes == 0 and p, timeout=120, interval=0.5)
    scaled = pool.auto_scale_run
    assert scaled.error is None and "$TargetDedicatedNodes=0" in scaled.results
    assert "$NodeDeallocationOption=taskcompletion" in scaled.results
    assert (scaled.timestamp - last_end).total_seconds() >= 10 * 60 - 30  # not before the idle period
    wait_for(lambda: not pool_nodes(azure_env, "auto"), timeout=60, interval=0.5)
    assert pools.get_pool("auto", session=magics.session, settings=magics.settings()).current_nodes == 0


def test_teardown_all_removes_named_pools_too(azure_env, shell, capsys):
    from batchmagic import pools

    magics = shell.magics_manager.registry["AzBatch"]
    other = Session()
    pools.create_pool("left", vm_size="Standard_D2s_v3", session=other, settings=magics.settings())
    # Made again by the same client (a retried create): the same pool; by another: one line.
    assert (
        pools.create_pool("left", vm_size="Standard_D2s_v3", session=other, settings=magics.settings()).name == "left"
    )
    with pytest.raises(ConfigError, match="pool left already exists"):
        pools.create_pool("left", vm_size="Standard_D2s_v3", session=Session(), settings=magics.settings())
    shell.run_line_magic("azbatch_teardown", "")
    assert "kept pool" not in capsys.readouterr().out  # this kernel never used Azure: it lists nothing
    shell.run_line_magic("azbatch_teardown", "--all")
    assert "removed Azure Batch pool left" in capsys.readouterr().out
    wait_for(lambda: not list(azure_env.client().list_pools()), timeout=30)


def test_pool_command_line(azure_env, capsys, monkeypatch):
    from batchmagic.cli import main

    monkeypatch.delenv("BATCHMAGIC_IMAGE")  # managing pools needs no training image
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "named pools (as %azbatch_pool)" in " ".join(capsys.readouterr().out.split())

    assert main(["pool", "create", "cli", "--vm", "Standard_D2s_v3", "--max-nodes", "2", "--idle", "5m"]) == 0
    assert "created pool cli: standard_d2s_v3" in capsys.readouterr().out
    assert main(["pool", "resize", "cli", "1"]) == 0
    assert "resizing pool cli" in capsys.readouterr().out
    wait_for(lambda: azure_env.client().get_pool("cli").target_dedicated_nodes == 1, timeout=30)
    assert main(["pool", "resize", "cli", "3"]) == 2
    assert "grows to at most 2 nodes" in capsys.readouterr().err
    assert main(["pool", "ls"]) == 0
    assert re.search(r"^cli: standard_d2s_v3, \d of 1 nodes \(max 2\)", capsys.readouterr().out, re.M)
    assert main(["pool", "delete", "cli"]) == 0
    assert "removed Azure Batch pool cli" in capsys.readouterr().out
