"""The Azure backend's pure parts, called with plain data: the requests it builds, the status it decides
from what Batch said, a named pool read back, the VM-size check, and the retries of its one call layer.
(The same parts through the real SDK and the Batch emulator: tests/test_azure.py, test_polling.py.)"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace as NS
from typing import Any

import pytest

from batchmagic.backends.azure import calls, requests, status
from batchmagic.backends.azure.named_pools import describe_pool, node_states
from batchmagic.backends.azure.nodeimages import NodeImage
from batchmagic.backends.azure.poolspec import (
    META_CLIENT,
    META_CREATED_BY,
    META_CREATOR,
    META_IDLE,
    META_KIND,
    META_MAX_NODES,
    Pool,
    PoolRequest,
)
from batchmagic.backends.azure.status import AzureRun
from batchmagic.backends.azure.vmsizes import vm_cores
from batchmagic.backends.base import Phase, TaskSubmission
from batchmagic.config import Secrets, Settings
from batchmagic.errors import ConfigError, RunFailed
from batchmagic.protocol import Layout

NODE = NodeImage("microsoft-dsvm", "ubuntu-hpc", "2204", "latest", "batch.node.ubuntu 22.04")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _submission(tasks: int = 1, **fields: Any) -> TaskSubmission:
    ids = [f"task-{i}" for i in range(tasks)]
    base: dict[str, Any] = dict(
        run_id="run-1", name="cell", task_ids=ids, spec_keys={t: f"runs/run-1/{t}/spec.json" for t in ids},
        vm_size="Standard_D4s_v3", timeout=1800, ledger_id="L1",
    )  # fmt: skip
    base.update(fields)
    return TaskSubmission(**base)


def _settings(**fields: Any) -> Settings:
    return Settings(**fields)


# --- requests ---


def test_the_job_waits_for_its_tasks_and_carries_the_runs_tags() -> None:
    sub = _submission(name="x" * 2000)
    job = requests.job_request(sub, requests.named_pool("warm"))
    assert job.id == "run-1" and len(job.display_name) == 1024
    assert job.constraints.max_wall_clock_time == timedelta(seconds=1800)
    assert str(job.all_tasks_complete_mode.value).lower() == "noaction"
    assert {i.name: i.value for i in job.metadata} == {"created-by": "batchmagic", "run-id": "run-1", "ledger-id": "L1"}
    assert job.pool_info.pool_id == "warm"


def test_an_auto_pool_prefetches_the_image_and_takes_low_priority_nodes_when_asked() -> None:
    sub = _submission(nodes=3, low_priority=True, slots_per_node=0)
    info = requests.auto_pool(sub, NODE, "reg.io/train:1", _settings())
    spec = info.auto_pool_specification
    assert spec.keep_alive is False and spec.auto_pool_id_prefix == "bm"
    pool = spec.pool
    assert (pool.target_dedicated_nodes, pool.target_low_priority_nodes) == (0, 3)
    assert pool.task_slots_per_node == 1
    containers = pool.virtual_machine_configuration.container_configuration
    assert containers.container_image_names == ["reg.io/train:1"] and containers.container_registries is None


def test_registry_credentials_go_in_the_pool_never_in_the_task_command() -> None:
    settings = _settings(secrets=Secrets(registry_username="u", registry_password="p"))
    config = requests.vm_configuration(NODE, ["reg.io/train:1"], settings)
    (registry,) = config.container_configuration.container_registries
    assert (registry.registry_server, registry.username, registry.password) == ("reg.io", "u", "p")
    task = requests.task_request(
        _submission(retries=2), "task-0", image="reg.io/train:1", spec_url="https://s/spec", outputs_url="https://s/c"
    )
    assert task.command_line == "python3 -P -m batchmagic.runner --spec spec.json"
    assert "p" not in task.command_line.split()
    assert task.resource_files[0].http_url == "https://s/spec"
    assert task.output_files[0].destination.container.path == Layout.process_files("run-1", "task-0")
    assert task.constraints.max_task_retry_count == 2


def test_a_task_on_a_named_pool_brings_credentials_only_for_an_image_the_pool_cannot_pull() -> None:
    settings = _settings(secrets=Secrets(registry_username="u", registry_password="p"))
    prefetching = Pool(name="warm", vm_size="Standard_D4s_v3", image="reg.io/train:1", registry="reg.io")
    assert requests.task_registry(prefetching, "reg.io/train:1", settings) is None
    assert requests.task_registry(prefetching, "reg.io/train:2", settings) is None  # the pool knows reg.io
    bare = Pool(name="warm", vm_size="Standard_D4s_v3")
    assert requests.task_registry(bare, "other.io/train:2", settings).registry_server == "other.io"
    assert requests.task_registry(bare, "other.io/train:2", _settings()) is None  # no credentials configured


def test_a_named_pool_is_made_at_zero_nodes_spread_and_tagged() -> None:
    request = PoolRequest("warm", "Standard_D4s_v3", max_nodes=4, idle=600)
    body = requests.pool_request(request, NODE, _settings(image="reg.io/t:1", user="ana"), client_id="c1", now=NOW)
    meta = {i.name: i.value for i in body.metadata}
    assert meta[META_CREATED_BY] == "batchmagic" and meta[META_CREATOR] == "ana" and meta[META_MAX_NODES] == "4"
    assert meta[META_KIND] == "named" and meta[META_CLIENT] == "c1"
    assert body.enable_auto_scale is True and "$TargetDedicatedNodes" in body.auto_scale_formula
    assert str(body.task_scheduling_policy.node_fill_type.value).lower() == "spread"


# --- status ---


def _task(tid: str, state: str, node: str = "", exit_code: int | None = None, at: int = 0) -> Any:
    info = None
    if state == "completed":
        info = NS(start_time=NOW, end_time=NOW, exit_code=exit_code, failure_info=None, last_requeue_time=None)
    return NS(
        id=tid,
        state=state,
        state_transition_time=NOW + timedelta(seconds=at),
        node_info=NS(node_id=node) if node else None,
        execution_info=info,
    )


def test_tasks_read_are_folded_into_statuses_a_tally_and_a_watermark() -> None:
    run = AzureRun(_submission(3))
    status.note_tasks(run, [_task("task-0", "running", "n1", at=1), _task("task-1", "completed", "n1", 0, at=5)])
    assert run.tally == Counter({"running": 1, "completed": 1})
    assert run.watermark == NOW + timedelta(seconds=5)
    assert run.tasks["task-0"].state == "running" and run.tasks["task-2"].state == "pending"
    assert status.counts_agree(NS(active=0, running=1, completed=1), run.tally)
    assert not status.counts_agree(NS(active=1, running=1, completed=1), run.tally)
    assert status.changed_filter(run.watermark) == "stateTransitionTime gt datetime'2026-12-01T12:00:05.000000Z'"
    status.note_tasks(run, [_task("task-0", "completed", "n1", 137)])
    assert run.tally == Counter({"running": 0, "completed": 2})
    assert "exited with code 137" in run.tasks["task-0"].failure
    assert status.needs_full_read(run, NS(completed=3))  # the counts say all done; the client holds 2
    run.disagreements = 2
    assert status.needs_full_read(run, NS(completed=2))


def test_the_job_decides_first_a_pool_it_could_not_make_or_a_timeout() -> None:
    run = AzureRun(_submission())
    refused = NS(state="active", execution_info=NS(scheduling_error=NS(code="Quota", message="no"), pool_id=""))
    verdict = status.job_verdict(refused, run)
    assert verdict is not None and verdict.phase is Phase.FAILED and "could not create the pool (Quota" in verdict.error
    late = NS(state="completed", execution_info=NS(scheduling_error=None, termination_reason="MaxWallClockTimeExpiry"))
    verdict = status.job_verdict(late, run)
    assert verdict is not None and "past its --timeout of 30m" in verdict.error
    ended = NS(state="terminating", execution_info=NS(scheduling_error=None, termination_reason="AllTasksComplete"))
    assert status.job_verdict(ended, run) is None
    active = NS(state="active", execution_info=None)
    assert status.job_verdict(active, run) is None


def test_a_preparing_task_pulls_only_on_a_node_that_lacks_the_image() -> None:
    run = AzureRun(_submission(2))
    run.pool_id = "bm1"
    status.note_tasks(run, [_task("task-0", "preparing", "n1"), _task("task-1", "active")])
    preparing = status.preparing_nodes(run)
    assert preparing == ["n1"] and status.task_stage(run, preparing) == "preparing"
    cold = status.tasks_status(run, "preparing", preparing, image="img", warm=set(), now=NOW)
    assert cold is not None and cold.phase is Phase.PULLING_IMAGE
    warm = status.tasks_status(run, "preparing", preparing, image="img", warm={("bm1", "n1", "img")}, now=NOW)
    assert warm is not None and warm.phase is Phase.QUEUED
    assert status.tasks_status(run, "waiting", [], image="img", warm=set(), now=NOW) is None
    run.prefetched = ("img",)
    assert status.tasks_status(run, "preparing", preparing, image="img", warm=set(), now=NOW).phase is Phase.QUEUED


def test_a_run_that_started_stays_running_and_a_done_run_says_when_its_pool_scales_down() -> None:
    run = AzureRun(_submission(2))
    run.started_task = True
    assert status.task_stage(run, []) == "running"
    status.note_tasks(run, [_task("task-0", "completed", "n1", 0), _task("task-1", "completed", "n1", 0)])
    assert status.task_stage(run, []) == "done"
    run.pool = Pool(name="warm", vm_size="Standard_D4s_v3", idle=600)
    done = status.tasks_status(run, "done", [], image="img", warm=set(), now=NOW)
    assert done is not None and done.phase is Phase.RUNNING and done.note.startswith("pool warm stays warm")
    assert status.warmed(run, "img") == {("", "n1", "img")}


def _pool(**fields: Any) -> Any:
    base = dict(
        state="active", allocation_state="steady", resize_errors=[], current_dedicated_nodes=0,
        current_low_priority_nodes=0, target_dedicated_nodes=1, target_low_priority_nodes=0,
    )  # fmt: skip
    base.update(fields)
    return NS(**base)


def test_the_pool_and_its_nodes_decide_while_no_task_is_on_one() -> None:
    run = AzureRun(_submission(nodes=2))
    run.pool_id = "bm1"
    quota = _pool(resize_errors=[NS(code="AccountCoreQuotaReached", message="quota\nmore")])
    verdict = status.pool_verdict(run, quota)
    assert verdict is not None and "2 x Standard_D4s_v3 needs 8 dedicated cores" in verdict.error
    assert status.pool_verdict(run, _pool()) is None
    resizing = _pool(allocation_state="resizing")
    assert status.nodes_status(run, resizing, []).phase is Phase.ALLOCATING
    booting = [NS(state="starting", errors=None, is_dedicated=True)]
    assert (
        status.nodes_status(run, _pool(), booting).detail == "1 of 2 booting, pulling the training image as they start"
    )
    ready = [NS(state="idle", errors=None, is_dedicated=True)] * 2
    assert status.nodes_status(run, _pool(), ready).detail == "2 of 2 nodes ready"
    broken = [NS(state="unusable", errors=[NS(code="DiskFull", message="full")], is_dedicated=True)]
    assert "could not start (DiskFull: full)" in status.nodes_status(run, _pool(), broken).error
    assert status.no_pool_status(run).phase is Phase.CREATING_POOL
    spot = status.holding_of_nodes("Standard_D4s_v3", [*ready, NS(state="idle", is_dedicated=False)])
    assert spot.billed == (2, 1)


def test_a_run_on_a_named_pool_waits_for_the_pool_to_grow() -> None:
    run = AzureRun(_submission(4))
    run.pool_id, run.pool = "warm", Pool(name="warm", vm_size="Standard_D4s_v3", max_nodes=2, evaluation_interval=300)
    growing = status.named_pool_status(run, _pool(target_dedicated_nodes=2), [])
    assert growing.phase is Phase.ALLOCATING and growing.detail == "pool warm growing to 2 Standard_D4s_v3"
    idle = status.named_pool_status(run, _pool(), [NS(state="idle", errors=None), NS(state="running", errors=None)])
    assert idle.detail == "pool warm: 1 nodes idle, 1 busy with other tasks"
    waiting = status.named_pool_status(run, _pool(target_dedicated_nodes=0), [])
    assert waiting.detail == "waiting for pool warm to grow: its formula runs every 5m"
    assert status.no_pool_status(run).phase is Phase.FAILED


def test_a_pool_as_batch_describes_it_reads_back_as_a_pool() -> None:
    raw = NS(
        id="warm", vm_size="standard_d4s_v3", state="active", allocation_state="steady",
        current_dedicated_nodes=1, current_low_priority_nodes=0, target_dedicated_nodes=1,
        target_low_priority_nodes=0, task_slots_per_node=2, creation_time=NOW,
        metadata=[NS(name=k, value=v) for k, v in {
            META_CREATED_BY: "batchmagic", META_KIND: "named", META_MAX_NODES: "4", META_IDLE: "600",
            META_CLIENT: "c1"}.items()],
        auto_scale_formula="", auto_scale_evaluation_interval=timedelta(minutes=5), resize_errors=[],
        enable_inter_node_communication=True,
        virtual_machine_configuration=NS(
            image_reference=NS(publisher="p", offer="o", sku="s", version="v"),
            container_configuration=NS(container_image_names=["reg.io/t:1"], container_registries=[]),
        ),
    )  # fmt: skip
    pool = describe_pool(raw, {"idle": 1})
    assert (pool.name, pool.max_nodes, pool.idle, pool.slots_per_node) == ("warm", 4, 600.0, 2)
    assert pool.batchmagic and pool.client_id == "c1" and pool.image == "reg.io/t:1" and pool.node_image == "p:o:s:v"
    assert pool.inter_node
    counts = NS(dedicated=NS(idle=2, running=1), low_priority=NS(idle=1, start_task_failed=1))
    assert node_states(counts) == {"idle": 3, "running": 1, "starttaskfailed": 1}


def test_one_vm_size_check_for_the_client() -> None:
    assert vm_cores("standard_d4s_v3") == 4  # the table
    assert vm_cores("Standard_E96_v5") == 96  # not in the table: from the name
    with pytest.raises(ConfigError, match="is not an Azure VM size"):
        vm_cores("big")


# --- the call layer ---


def _http_error(status_code: int, code: str = "") -> Exception:
    from azure.core.exceptions import HttpResponseError

    err = HttpResponseError(message=f"{status_code} {code}")
    err.status_code = status_code
    err.error = NS(code=code, message=f"{code} message")  # type: ignore[assignment]
    return err


def test_the_call_layer_retries_what_is_transient_and_translates_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calls.time, "sleep", lambda seconds: None)
    answers: list[Any] = [_http_error(503), _http_error(429), "job"]

    def flaky() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    layer = calls.BatchCalls(client=None)
    assert layer.call(flaky, "read the job") == "job" and answers == []

    def exists() -> None:
        raise _http_error(409, "JobExists")

    assert layer.call(exists, "create the job", accept=lambda err: calls.code(err) == "JobExists") is None
    with pytest.raises(RunFailed, match="could not create the job: JobExists"):
        layer.call(exists, "create the job")

    def refused() -> None:
        raise _http_error(400, "InvalidPropertyValue")

    with pytest.raises(ConfigError, match="Azure Batch refused to add the task: InvalidPropertyValue"):
        layer.call(refused, "add the task")

    def missing() -> None:
        raise _http_error(404, "PoolNotFound")

    with pytest.raises(ConfigError, match="there is no pool warm"):
        layer.pool_call(missing, "warm", "read")


def test_a_brief_block_gives_up_on_an_unreachable_batch_after_one_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user waits on (a teardown, a pool listing) says "could not reach" after one retry; another
    thread's calls (a run's monitor) keep all their retries meanwhile."""
    from azure.core.exceptions import ServiceRequestError

    monkeypatch.setattr(calls.time, "sleep", lambda seconds: None)
    tries: dict[str, int] = {}

    def unreachable(who: str) -> None:
        tries[who] = tries.get(who, 0) + 1
        raise ServiceRequestError("Connection refused")

    layer = calls.BatchCalls(client=None)
    other: list[BaseException] = []
    with layer.brief():
        with pytest.raises(RunFailed, match="could not reach Azure Batch to read the job: Connection refused"):
            layer.call(lambda: unreachable("brief"), "read the job")
        monitor = threading.Thread(
            target=lambda: other.append(pytest.raises(RunFailed, layer.call, lambda: unreachable("monitor"), "poll"))
        )
        monitor.start()
        monitor.join()
    with pytest.raises(RunFailed):
        layer.call(lambda: unreachable("after"), "read the job")
    assert tries == {"brief": 1 + calls.BRIEF_RETRIES, "monitor": 1 + calls.RETRIES, "after": 1 + calls.RETRIES}


# --- what validate refuses (a unit test of the backend with a stand-in client and store) ---


def _backend(settings: Settings) -> Any:
    from batchmagic.backends.azure.backend import AzureBackend

    listed = NS(
        image_reference=NS(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204", version="latest"),
        node_agent_sku_id="batch.node.ubuntu 22.04",
        os_type="linux",
        verification_type="verified",
        capabilities=["DockerCompatible"],
        batch_support_end_of_life=None,
    )
    client = NS(list_supported_images=lambda: [listed])
    store = NS(ensure_container=lambda: None)
    return AzureBackend(client, store, settings)  # type: ignore[arg-type]


def test_an_image_given_with_the_run_needs_no_configured_image_nor_registry() -> None:
    """``--image X`` alone is enough: neither AzBatch.image nor a registry needs to be set."""
    backend = _backend(_settings())
    backend.validate(_submission(image="reg.io/train:1"))  # no ConfigError
    with pytest.raises(ConfigError, match="BATCHMAGIC_IMAGE is not set"):
        backend.validate(_submission())
    configured = _backend(_settings(image="reg.io/train:1"))
    configured.validate(_submission())
