"""Every public operation of azure-batch 15.1's BatchClient reaches a route of the emulator.

The list of operations comes from the client itself (``dir(BatchClient)``): an SDK that grows an
operation fails ``test_every_client_operation_has_a_call`` until a call is written for it here. Each
call may succeed or fail as the service would (a 404 for a resource that does not exist, a 409 for a
wrong state), but never with a route miss (404 ``ResourceNotFound``) or a 405.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from batchmagic.emulator import schema
from tests.support.emulator import emulator_fixture, wait_for

emulator = emulator_fixture(scope="module", allocation_delay=0.2)

VMC = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)
POOL_INFO = m.BatchPoolInfo(pool_id="ops")
META = m.BatchMetadataItem(name="a", value="b")
NOT_CALLED = {"close", "send_request"}
#: Operations still answering 501 NotImplemented (none: the node operations landed).
PENDING: set[str] = set()


def _public_operations() -> list[str]:
    return sorted(n for n in dir(BatchClient) if not n.startswith("_") and callable(getattr(BatchClient, n)))


def _calls(c: Any, node: str) -> dict[str, Callable[[], Any]]:
    spec = m.BatchJobSpecification(pool_info=POOL_INFO)
    sched = m.BatchJobScheduleConfiguration(recurrence_interval="PT1H")
    return {
        "list_applications": lambda: list(c.list_applications()),
        "get_application": lambda: c.get_application("app"),
        "list_pool_usage_metrics": lambda: list(c.list_pool_usage_metrics()),
        "create_pool": lambda: c.create_pool(
            m.BatchPoolCreateOptions(id="ops3", vm_size="standard_d2s_v3", virtual_machine_configuration=VMC)
        ),
        "list_pools": lambda: list(c.list_pools()),
        "pool_exists": lambda: c.pool_exists("ops"),
        "get_pool": lambda: c.get_pool("ops"),
        "update_pool": lambda: c.update_pool("ops", m.BatchPoolUpdateOptions(metadata=[META])),
        "disable_pool_auto_scale": lambda: c.disable_pool_auto_scale("ops"),
        "enable_pool_auto_scale": lambda: c.enable_pool_auto_scale(
            "ops2", m.BatchPoolEnableAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = 0;")
        ),
        "evaluate_pool_auto_scale": lambda: c.evaluate_pool_auto_scale(
            "ops2", m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = 0;")
        ),
        "begin_resize_pool": lambda: c.begin_resize_pool(
            "ops", m.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=0.1
        ).result(),
        "begin_stop_pool_resize": lambda: c.begin_stop_pool_resize("ops", polling_interval=0.1).result(),
        "replace_pool_properties": lambda: c.replace_pool_properties(
            "ops",
            m.BatchPoolReplaceOptions(application_package_references=[], metadata=[]),
        ),
        "begin_remove_nodes": lambda: c.begin_remove_nodes(
            "ops2", m.BatchNodeRemoveOptions(node_ids=["nope"]), polling_interval=0.1
        ),
        "begin_delete_pool": lambda: c.begin_delete_pool("ops3", polling_interval=0.1).result(),
        "list_supported_images": lambda: list(c.list_supported_images()),
        "list_pool_node_counts": lambda: list(c.list_pool_node_counts()),
        "create_job": lambda: c.create_job(m.BatchJobCreateOptions(id="ops2", pool_info=POOL_INFO)),
        "get_job": lambda: c.get_job("ops"),
        "update_job": lambda: c.update_job("ops", m.BatchJobUpdateOptions(priority=5)),
        "replace_job": lambda: c.replace_job("ops", m.BatchJob(pool_info=m.BatchPoolInfo(pool_id="ops"), priority=1)),
        "begin_disable_job": lambda: c.begin_disable_job(
            "ops2", m.BatchJobDisableOptions(disable_tasks=m.DisableBatchJobOption.REQUEUE), polling_interval=0.1
        ).result(),
        "begin_enable_job": lambda: c.begin_enable_job("ops2", polling_interval=0.1).result(),
        # With options None (or empty) the SDK fails to serialise its own request (content-type None).
        "begin_terminate_job": lambda: c.begin_terminate_job(
            "ops2", m._models.BatchJobTerminateOptions(termination_reason="done"), polling_interval=0.1
        ).result(),
        "begin_delete_job": lambda: c.begin_delete_job("ops2", polling_interval=0.1).result(),
        "list_jobs": lambda: list(c.list_jobs()),
        "list_job_preparation_and_release_task_status": lambda: list(
            c.list_job_preparation_and_release_task_status("ops")
        ),
        "get_job_task_counts": lambda: c.get_job_task_counts("ops"),
        "create_job_schedule": lambda: c.create_job_schedule(
            m.BatchJobScheduleCreateOptions(id="sched", schedule=sched, job_specification=spec)
        ),
        "list_jobs_from_schedule": lambda: list(c.list_jobs_from_schedule("sched")),
        "job_schedule_exists": lambda: c.job_schedule_exists("sched"),
        "get_job_schedule": lambda: c.get_job_schedule("sched"),
        "update_job_schedule": lambda: c.update_job_schedule(
            "sched", m.BatchJobScheduleUpdateOptions(metadata=[m.BatchMetadataItem(name="a", value="b")])
        ),
        "replace_job_schedule": lambda: c.replace_job_schedule(
            "sched", m.BatchJobSchedule(schedule=sched, job_specification=spec)
        ),
        "disable_job_schedule": lambda: c.disable_job_schedule("sched"),
        "enable_job_schedule": lambda: c.enable_job_schedule("sched"),
        "list_job_schedules": lambda: list(c.list_job_schedules()),
        "begin_terminate_job_schedule": lambda: c.begin_terminate_job_schedule("sched", polling_interval=0.1).result(),
        "begin_delete_job_schedule": lambda: c.begin_delete_job_schedule("sched", polling_interval=0.1).result(),
        "create_task": lambda: c.create_task("ops", m.BatchTaskCreateOptions(id="t2", command_line="sleep 30")),
        "list_tasks": lambda: list(c.list_tasks("ops")),
        "create_task_collection": lambda: c.create_task_collection(
            "ops", m.BatchTaskGroup(task_values=[m.BatchTaskCreateOptions(id="t3", command_line="true")])
        ),
        "create_tasks": lambda: c.create_tasks("ops", [m.BatchTaskCreateOptions(id="t4", command_line="true")]),
        "get_task": lambda: c.get_task("ops", "t"),
        "replace_task": lambda: c.replace_task(
            "ops", "t2", m.BatchTask(constraints=m.BatchTaskConstraints(max_task_retry_count=1))
        ),
        "list_subtasks": lambda: list(c.list_subtasks("ops", "t")),
        "terminate_task": lambda: c.terminate_task("ops", "t2"),
        "delete_task": lambda: c.delete_task("ops", "t3"),
        "list_task_files": lambda: list(c.list_task_files("ops", "t")),
        "get_task_file_properties": lambda: c.get_task_file_properties("ops", "t", "stdout.txt"),
        "download_task_file": lambda: b"".join(c.download_task_file("ops", "t", "stdout.txt")),
        "delete_task_file": lambda: c.delete_task_file("ops", "t", "stderr.txt"),
        "reactivate_task": lambda: c.reactivate_task("ops", "t"),
        "list_nodes": lambda: list(c.list_nodes("ops")),
        "get_node": lambda: c.get_node("ops", node),
        "get_node_remote_login_settings": lambda: c.get_node_remote_login_settings("ops", node),
        "list_node_extensions": lambda: list(c.list_node_extensions("ops", node)),
        "get_node_extension": lambda: c.get_node_extension("ops", node, "ext"),
        "upload_node_logs": lambda: c.upload_node_logs(
            "ops",
            node,
            m.UploadBatchServiceLogsOptions(
                container_url="http://127.0.0.1:9/logs?sig=x", start_time="2026-01-01T00:00:00Z"
            ),
        ),
        "list_node_files": lambda: list(c.list_node_files("ops", node)),
        "get_node_file_properties": lambda: c.get_node_file_properties("ops", node, "startup"),
        "download_node_file": lambda: b"".join(c.download_node_file("ops", node, "tasks/ops/job-1/t/stdout.txt")),
        "delete_node_file": lambda: c.delete_node_file("ops", node, "shared", recursive=True),
        "create_node_user": lambda: c.create_node_user(
            "ops", node, m.BatchNodeUserCreateOptions(name="u", password="p")
        ),
        "replace_node_user": lambda: c.replace_node_user("ops", node, "u", m.BatchNodeUserReplaceOptions(password="q")),
        "delete_node_user": lambda: c.delete_node_user("ops", node, "u"),
        "disable_node_scheduling": lambda: c.disable_node_scheduling(
            "ops", node, m.BatchNodeDisableSchedulingOptions(node_disable_scheduling_option="requeue")
        ),
        "enable_node_scheduling": lambda: c.enable_node_scheduling("ops", node),
        "begin_reboot_node": lambda: c.begin_reboot_node(
            "ops", node, m._models.BatchNodeRebootOptions({"nodeRebootOption": "requeue"}), polling_interval=0.1
        ).result(),
        "begin_reimage_node": lambda: c.begin_reimage_node(
            "ops", node, m._models.BatchNodeReimageOptions({"nodeReimageOption": "requeue"}), polling_interval=0.1
        ).result(),
        "begin_deallocate_node": lambda: c.begin_deallocate_node(
            "ops", node, m._models.BatchNodeDeallocateOptions({"nodeDeallocateOption": "requeue"}), polling_interval=0.1
        ).result(),
        "begin_start_node": lambda: c.begin_start_node("ops", node, polling_interval=0.1).result(),
    }  # fmt: skip


@pytest.fixture(scope="module")
def prepared(emulator: Any) -> tuple[Any, str]:
    client = emulator.client()
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="ops", vm_size="standard_d2s_v3", target_dedicated_nodes=1, virtual_machine_configuration=VMC
        )
    )
    client.create_pool(
        m.BatchPoolCreateOptions(id="ops2", vm_size="standard_d2s_v3", virtual_machine_configuration=VMC)
    )
    client.create_job(m.BatchJobCreateOptions(id="ops", pool_info=m.BatchPoolInfo(pool_id="ops")))
    client.create_task("ops", m.BatchTaskCreateOptions(id="t", command_line="echo out; exit 3"))
    wait_for(lambda: client.get_task("ops", "t").state == m.BatchTaskState.COMPLETED)
    node = client.get_task("ops", "t").node_info.node_id
    wait_for(lambda: client.get_pool("ops2").allocation_state == m.AllocationState.STEADY)
    return client, node


def test_every_client_operation_has_a_call() -> None:
    calls = _calls(None, "n")
    missing = sorted(set(_public_operations()) - NOT_CALLED - set(calls))
    assert not missing, f"BatchClient operations without a call here: {missing}"
    assert len(_public_operations()) - len(NOT_CALLED) == 73


def test_every_client_operation_is_routed(prepared: tuple[Any, str]) -> None:
    client, node = prepared
    outcomes: dict[str, str] = {}
    for name, call in _calls(client, node).items():
        try:
            call()
            outcomes[name] = "ok"
        except HttpResponseError as err:
            code = err.error.code if err.error is not None else None
            status = err.status_code
            assert code not in ("ResourceNotFound", "UnsupportedHttpVerb"), f"{name}: route miss {status} {code}"
            assert status != 405, name
            outcomes[name] = f"{status} {code}"
    expected_errors = {
        "get_application": "404 ApplicationNotFound",
        "list_job_preparation_and_release_task_status": "409 JobPreparationTaskNotSpecified",
        "get_node_extension": "404 NodeExtensionNotFound",
        "begin_remove_nodes": "404 NodeNotFound",
    }
    for name, outcome in expected_errors.items():
        assert outcomes[name] == outcome
    for name in PENDING:
        assert outcomes[name] in ("ok", "501 NotImplemented") or not outcomes[name].startswith("404"), name
    surprising = {
        n: o for n, o in outcomes.items() if o != "ok" and n not in expected_errors and o != "501 NotImplemented"
    }
    assert not surprising, surprising


def test_every_operation_of_the_description_is_routed(emulator: Any) -> None:
    """The 77 operations of BatchService.json, including the certificate ones the SDK no longer has."""
    ops = schema.operations()
    assert len(ops) == 77
    client = emulator.client()
    for op in ops:
        path = op.path
        for name in ("poolId", "nodeId", "jobId", "taskId", "jobScheduleId", "applicationId", "extensionName"):
            path = path.replace("{" + name + "}", "zz")
        path = path.replace("{thumbprintAlgorithm}", "sha1").replace("{thumbprint}", "0" * 40)
        path = path.replace("{filePath}", "f.txt").replace("{userName}", "u")
        request = HttpRequest(op.method, f"{path}?api-version=2025-06-01", json={} if op.body else None)
        try:
            status, code = client.send_request(request).status_code, None
        except HttpResponseError as err:
            status = err.status_code
            code = err.response.json().get("code") if err.response is not None and err.response.content else None
        assert code not in ("ResourceNotFound", "UnsupportedHttpVerb"), (op.operation_id, status, code)


def test_certificates(emulator: Any) -> None:
    client = emulator.client()
    thumb = "ab" * 20
    body = {
        "thumbprintAlgorithm": "sha1",
        "thumbprint": thumb,
        "data": base64.b64encode(b"cert").decode(),
        "certificateFormat": "cer",
    }
    created = client.send_request(HttpRequest("POST", "/certificates?api-version=2025-06-01", json=body))
    assert created.status_code == 201
    path = f"/certificates(thumbprintAlgorithm=sha1,thumbprint={thumb})?api-version=2025-06-01"
    got = client.send_request(HttpRequest("GET", path))
    assert got.status_code == 200 and got.json()["state"] == "active" and "data" not in got.json()
    assert client.send_request(HttpRequest("DELETE", path)).status_code == 202
    with pytest.raises(HttpResponseError) as info:
        client.send_request(HttpRequest("GET", path))
    assert info.value.status_code == 404
