"""The service's semantics, written from its REST reference: api-versions, validation, Host-based URLs,
the job state machine, task reactivate and replace, job schedules under a scaled clock."""

from __future__ import annotations

import time
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from batchmagic.emulator.server import API_VERSIONS
from tests.support.emulator import emulator_fixture, wait_for

# A minute of emulated time passes in a second: schedule recurrences (at least a minute) take seconds.
emulator = emulator_fixture(scope="module", allocation_delay=6, time_scale=30)

VMC = {
    "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204"},
    "nodeAgentSKUId": "batch.node.ubuntu 22.04",
}


def _send(client: BatchClient, method: str, path: str, body: Any = None, version: str = "2025-06-01") -> Any:
    sep = "&" if "?" in path else "?"
    request = HttpRequest(method, f"{path}{sep}api-version={version}", json=body)
    try:
        return client.send_request(request)
    except HttpResponseError as err:
        return err.response


def _error(response: Any) -> tuple[int, str, dict[str, str]]:
    body = response.json()
    return response.status_code, body["code"], {v["key"]: v["value"] for v in body.get("values", [])}


@pytest.fixture(scope="module")
def client(emulator: Any) -> BatchClient:
    c = emulator.client()
    pool = {"id": "p", "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": VMC, "targetDedicatedNodes": 1}
    assert _send(c, "POST", "/pools", pool).status_code == 201
    return c


# ----------------------------------------------------------------- api-version
@pytest.mark.parametrize(
    "version", ["2025-06-01", "2024-07-01.20.0", "2024-02-01.19.0", "2021-06-01.14.0", "2018-12-01.8.0"]
)
def test_api_versions_sent_by_sdks_11_to_15_are_accepted(client: BatchClient, version: str) -> None:
    assert version in API_VERSIONS
    assert _send(client, "GET", "/pools", version=version).status_code == 200


@pytest.mark.parametrize("version", ["bogus", "2025-06-02", "2099-01-01.99.0"])
def test_unknown_api_version_is_refused(client: BatchClient, version: str) -> None:
    status, code, values = _error(_send(client, "GET", "/pools", version=version))
    assert (status, code) == (400, "InvalidQueryParameterValue")
    assert values["QueryParameterName"] == "api-version" and values["QueryParameterValue"] == version


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("path", "body", "prop"),
    [
        ("/jobs", {"id": "v1", "poolInfo": {"poolId": "p"}, "priority": "high"}, "priority"),
        ("/jobs", {"id": "v2", "poolInfo": {"poolId": "p"}, "onAllTasksComplete": "sometimes"}, "onAllTasksComplete"),
        ("/jobs", {"id": "v3", "poolInfo": "p"}, "poolInfo"),
        ("/pools", {"id": "v4", "vmSize": "Standard_D2s_v3", "targetDedicatedNodes": "two"}, "targetDedicatedNodes"),
        ("/pools", {"id": "v5", "vmSize": 2}, "vmSize"),
        ("/pools", {"id": "v6", "vmSize": "Standard_D2s_v3", "enableAutoScale": "maybe"}, "enableAutoScale"),
        ("/jobschedules", {"id": "v7", "schedule": [], "jobSpecification": {"poolInfo": {}}}, "schedule"),
        ("/jobs/j/tasks", {"id": "v8", "commandLine": ["echo"]}, "commandLine"),
    ],
)
def test_wrong_types_are_invalid_property_values_for_every_resource(
    client: BatchClient, path: str, body: dict[str, Any], prop: str
) -> None:
    status, code, values = _error(_send(client, "POST", path, body))
    assert (status, code) == (400, "InvalidPropertyValue")
    assert values["PropertyName"] == prop


def test_patch_with_a_wrong_type_changes_nothing(client: BatchClient) -> None:
    client.create_job(m.BatchJobCreateOptions(id="patched", pool_info=m.BatchPoolInfo(pool_id="p"), priority=3))
    status, code, values = _error(_send(client, "PATCH", "/jobs/patched", {"priority": "high"}))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "priority")
    assert client.get_job("patched").priority == 3
    status, code, _ = _error(_send(client, "PATCH", "/jobs/patched", {"priority": 1001}))
    assert (status, code) == (400, "OutOfRangePriority")


def test_missing_required_properties(client: BatchClient) -> None:
    status, code, values = _error(_send(client, "POST", "/pools", {"id": "nosize"}))
    assert (status, code, values["PropertyName"]) == (400, "MissingRequiredProperty", "vmSize")
    status, code, values = _error(_send(client, "POST", "/jobs/patched/disable", {}))
    assert (status, code, values["PropertyName"]) == (400, "MissingRequiredProperty", "disableTasks")


def test_integers_as_strings_are_accepted_alike_for_pools_and_jobs(client: BatchClient) -> None:
    # The Azure CLI sends them so; the service reads them as numbers, for every resource.
    pool = {"id": "strint", "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": VMC}
    pool |= {"targetDedicatedNodes": "0", "taskSlotsPerNode": "2"}
    assert _send(client, "POST", "/pools", pool).status_code == 201
    assert client.get_pool("strint").task_slots_per_node == 2
    job = {"id": "strint", "poolInfo": {"poolId": "strint"}, "priority": "10"}
    job |= {"constraints": {"maxTaskRetryCount": "2"}}
    assert _send(client, "POST", "/jobs", job).status_code == 201
    raw = _send(client, "GET", "/jobs/strint").json()
    assert raw["priority"] == 10 and raw["constraints"]["maxTaskRetryCount"] == 2
    assert _send(client, "PATCH", "/jobs/strint", {"priority": "20"}).status_code == 200
    assert client.get_job("strint").priority == 20


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        ("STANDARD_DS1_V2", True),
        ("Standard_D1_v2", True),
        ("Standard_D2_v5", True),
        ("Standard_A1_v2", True),
        ("standard_a2m_v2", True),
        ("Standard_L8s_v3", True),  # not in the table: accepted with a default
        ("Standard_A1", False),  # retired
        ("small", False),
        ("Standard_nope", False),
    ],
)
def test_vm_sizes_follow_the_service_rules(client: BatchClient, size: str, ok: bool) -> None:
    pool_id = "size-" + size.lower().replace("_", "-")
    response = _send(client, "POST", "/pools", {"id": pool_id, "vmSize": size, "virtualMachineConfiguration": VMC})
    if ok:
        assert response.status_code == 201, response.text()
        assert client.get_pool(pool_id).vm_size == size.lower()
    else:
        status, code, values = _error(response)
        assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "vmSize")


def test_images_are_checked_against_the_supported_list(client: BatchClient) -> None:
    images = {(i.image_reference.offer, i.image_reference.sku): i for i in client.list_supported_images()}
    assert images[("ubuntu-server-container", "20-04-lts")].batch_support_end_of_life is not None
    for image, agent, reason in [
        ({"publisher": "nobody", "offer": "nothing", "sku": "1"}, "batch.node.ubuntu 22.04", "supported images"),
        (
            {"publisher": "microsoft-azure-batch", "offer": "ubuntu-server-container", "sku": "20-04-lts"},
            "batch.node.ubuntu 20.04",
            "end of life",
        ),
        ({"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204"}, "batch.node.windows amd64", "agent"),
    ]:
        body = {"id": "img", "vmSize": "Standard_D2s_v3"}
        body["virtualMachineConfiguration"] = {"imageReference": image, "nodeAgentSKUId": agent}
        status, code, values = _error(_send(client, "POST", "/pools", body))
        assert (status, code) == (400, "InvalidPropertyValue")
        assert reason in values["Reason"]


# ----------------------------------------------------------------- Host-based URLs
def test_urls_follow_the_host_the_client_used(emulator: Any, client: BatchClient) -> None:
    port = emulator.endpoint.rsplit(":", 1)[1]
    other = BatchClient(f"http://localhost:{port}", AzureNamedKeyCredential(emulator.account, emulator.key))
    assert other.get_pool("p").url == f"http://localhost:{port}/pools/p"
    assert client.get_pool("p").url == f"{emulator.endpoint}/pools/p"
    page = _send(other, "GET", "/pools?maxresults=1").json()
    assert page["odata.metadata"].startswith(f"http://localhost:{port}/$metadata")
    assert page["odata.nextLink"].startswith(f"http://localhost:{port}/pools?")
    assert len(list(other.list_pools(max_results=1))) == len(list(client.list_pools()))
    created = _send(other, "POST", "/jobs", {"id": "hosted", "poolInfo": {"poolId": "p"}})
    assert created.headers["Location"] == f"http://localhost:{port}/jobs/hosted"
    assert created.headers["DataServiceId"] == f"http://localhost:{port}/jobs/hosted"


# ----------------------------------------------------------------- jobs
def test_job_disable_enable_terminate(client: BatchClient) -> None:
    client.create_job(m.BatchJobCreateOptions(id="sm", pool_info=m.BatchPoolInfo(pool_id="p")))
    client.create_task("sm", m.BatchTaskCreateOptions(id="long", command_line="sleep 60"))
    wait_for(lambda: client.get_task("sm", "long").state == m.BatchTaskState.RUNNING, 60)
    client.begin_disable_job(
        "sm", m.BatchJobDisableOptions(disable_tasks=m.DisableBatchJobOption.REQUEUE), polling_interval=0.1
    ).result()
    job = client.get_job("sm")
    assert job.state == m.BatchJobState.DISABLED and job.previous_state == m.BatchJobState.DISABLING
    task = client.get_task("sm", "long")
    assert task.state == m.BatchTaskState.ACTIVE and task.execution_info.requeue_count == 1
    # Disabling again is allowed; tasks added to a disabled job wait.
    assert _send(client, "POST", "/jobs/sm/disable", {"disableTasks": "wait"}).status_code == 202
    client.create_task("sm", m.BatchTaskCreateOptions(id="later", command_line="true"))
    client.begin_enable_job("sm", polling_interval=0.1).result()
    assert client.get_job("sm").state == m.BatchJobState.ACTIVE
    client.terminate_task("sm", "long")  # requeued, it runs again first on the pool's one slot
    wait_for(lambda: client.get_task("sm", "later").state == m.BatchTaskState.COMPLETED, 60)
    client.begin_terminate_job("sm", m._models.BatchJobTerminateOptions(termination_reason="enough")).result()
    wait_for(lambda: client.get_job("sm").state == m.BatchJobState.COMPLETED, 60)
    assert client.get_job("sm").execution_info.termination_reason == "enough"
    for method, path, body, code in [
        ("POST", "/jobs/sm/disable", {"disableTasks": "requeue"}, "JobCompleted"),
        ("POST", "/jobs/sm/enable", None, "JobCompleted"),
        ("POST", "/jobs/sm/terminate", None, "JobCompleted"),
        ("PATCH", "/jobs/sm", {"priority": 1}, "JobCompleted"),
    ]:
        status, got, _ = _error(_send(client, method, path, body))
        assert (status, got) == (409, code), (method, path)
    assert client.get_job("sm").state == m.BatchJobState.COMPLETED


def test_disable_terminate_ends_running_tasks(client: BatchClient) -> None:
    client.create_job(m.BatchJobCreateOptions(id="dt", pool_info=m.BatchPoolInfo(pool_id="p")))
    client.create_task("dt", m.BatchTaskCreateOptions(id="long", command_line="sleep 60"))
    wait_for(lambda: client.get_task("dt", "long").state == m.BatchTaskState.RUNNING, 60)
    assert _send(client, "POST", "/jobs/dt/disable", {"disableTasks": "terminate"}).status_code == 202
    wait_for(lambda: client.get_job("dt").state == m.BatchJobState.DISABLED, 60)
    task = client.get_task("dt", "long")
    assert task.state == m.BatchTaskState.COMPLETED and task.execution_info.failure_info.code == "TaskEnded"
    client.begin_delete_job("dt", polling_interval=0.1).result()


def test_put_replaces_and_patch_merges(client: BatchClient) -> None:
    body = {"id": "rep", "poolInfo": {"poolId": "p"}, "priority": 7, "maxParallelTasks": 3}
    body |= {"metadata": [{"name": "a", "value": "1"}], "constraints": {"maxTaskRetryCount": 2}}
    assert _send(client, "POST", "/jobs", body).status_code == 201
    assert _send(client, "PATCH", "/jobs/rep", {"priority": 8}).status_code == 200
    job = _send(client, "GET", "/jobs/rep").json()
    assert job["priority"] == 8 and job["maxParallelTasks"] == 3 and job["metadata"] == body["metadata"]
    assert _send(client, "PUT", "/jobs/rep", {"poolInfo": {"poolId": "p"}, "priority": 9}).status_code == 200
    job = _send(client, "GET", "/jobs/rep").json()
    assert job["priority"] == 9 and job["maxParallelTasks"] == -1 and "metadata" not in job
    assert job["constraints"]["maxTaskRetryCount"] == 0
    status, code, values = _error(_send(client, "PUT", "/jobs/rep", {"priority": 1}))
    assert (status, code, values["PropertyName"]) == (400, "MissingRequiredProperty", "poolInfo")
    # The pool may change only while the job is disabled.
    status, code, _ = _error(_send(client, "PUT", "/jobs/rep", {"poolInfo": {"poolId": "strint"}}))
    assert (status, code) == (409, "OperationInvalidForCurrentState")
    _send(client, "POST", "/jobs/rep/disable", {"disableTasks": "requeue"})
    wait_for(lambda: client.get_job("rep").state == m.BatchJobState.DISABLED, 30)
    assert _send(client, "PUT", "/jobs/rep", {"poolInfo": {"poolId": "strint"}}).status_code == 200
    assert client.get_job("rep").pool_info.pool_id == "strint"


# ----------------------------------------------------------------- tasks
def test_task_reactivate_and_replace(client: BatchClient) -> None:
    client.create_job(m.BatchJobCreateOptions(id="re", pool_info=m.BatchPoolInfo(pool_id="p")))
    client.create_task("re", m.BatchTaskCreateOptions(id="fails", command_line="exit 3"))
    client.create_task("re", m.BatchTaskCreateOptions(id="ok", command_line="true"))
    done = wait_for(lambda: (t := client.get_task("re", "fails")).state == m.BatchTaskState.COMPLETED and t, 60)
    assert done.execution_info.exit_code == 3
    wait_for(lambda: client.get_task("re", "ok").state == m.BatchTaskState.COMPLETED, 60)
    status, code, _ = _error(_send(client, "POST", "/jobs/re/tasks/ok/reactivate"))
    assert (status, code) == (409, "OperationInvalidForCurrentState")
    client.reactivate_task("re", "fails")
    again = wait_for(lambda: (t := client.get_task("re", "fails")).state == m.BatchTaskState.COMPLETED and t, 60)
    assert again.execution_info.exit_code == 3 and again.previous_state == m.BatchTaskState.RUNNING
    # Replace: constraints are the updatable part; omitted ones go back to their defaults.
    client.create_task(
        "re",
        m.BatchTaskCreateOptions(
            id="slow", command_line="sleep 60", constraints=m.BatchTaskConstraints(max_task_retry_count=4)
        ),
    )
    client.replace_task("re", "slow", m.BatchTask(constraints=m.BatchTaskConstraints(max_wall_clock_time="PT1H")))
    constraints = _send(client, "GET", "/jobs/re/tasks/slow").json()["constraints"]
    assert constraints["maxWallClockTime"] == "PT1H" and constraints["maxTaskRetryCount"] == 0
    client.terminate_task("re", "slow")
    wait_for(lambda: client.get_task("re", "slow").state == m.BatchTaskState.COMPLETED, 60)
    status, code, _ = _error(_send(client, "PUT", "/jobs/re/tasks/slow", {"constraints": {}}))
    assert (status, code) == (409, "TaskCompleted")


# ----------------------------------------------------------------- job schedules
def test_job_schedule_recurrence_under_a_scaled_clock(client: BatchClient) -> None:
    spec = {"poolInfo": {"poolId": "p"}, "onAllTasksComplete": "terminatejob", "priority": 4}
    body = {"id": "every", "schedule": {"recurrenceInterval": "PT1M"}, "jobSpecification": spec}
    assert _send(client, "POST", "/jobschedules", body).status_code == 201
    assert client.job_schedule_exists("every")
    # One emulated minute is two real seconds here: three jobs within a few seconds.
    jobs = wait_for(lambda: len(js := list(client.list_jobs_from_schedule("every"))) >= 3 and js, 60)
    assert [j.id for j in jobs[:3]] == ["every:job-1", "every:job-2", "every:job-3"]
    assert all(j.priority == 4 for j in jobs)
    schedule = client.get_job_schedule("every")
    assert schedule.execution_info.recent_job.id.startswith("every:job-")
    assert schedule.execution_info.next_run_time is not None
    client.disable_job_schedule("every")
    count = len(list(client.list_jobs_from_schedule("every")))
    wait_for(lambda: client.get_job_schedule("every").state == m.BatchJobScheduleState.DISABLED)
    time.sleep(3)  # 90 emulated seconds: no new job while disabled
    assert len(list(client.list_jobs_from_schedule("every"))) == count
    client.enable_job_schedule("every")
    wait_for(lambda: len(list(client.list_jobs_from_schedule("every"))) > count, 60)
    client.update_job_schedule(
        "every", m.BatchJobScheduleUpdateOptions(metadata=[m.BatchMetadataItem(name="k", value="v")])
    )
    assert client.get_job_schedule("every").metadata[0].name == "k"
    client.begin_terminate_job_schedule("every", polling_interval=0.1).result()
    assert client.get_job_schedule("every").state == m.BatchJobScheduleState.COMPLETED
    status, code, _ = _error(_send(client, "POST", "/jobschedules/every/disable"))
    assert (status, code) == (409, "JobScheduleCompleted")
    client.begin_delete_job_schedule("every", polling_interval=0.1).result()
    assert not any(j.id.startswith("every:") for j in client.list_jobs())
    with pytest.raises(HttpResponseError):
        client.get_job_schedule("every")


def test_job_schedule_without_recurrence_runs_once(client: BatchClient) -> None:
    spec = {"poolInfo": {"poolId": "p"}, "onAllTasksComplete": "terminatejob"}
    body = {"id": "once", "schedule": {}, "jobSpecification": spec}
    assert _send(client, "POST", "/jobschedules", body).status_code == 201
    wait_for(lambda: client.get_job_schedule("once").state == m.BatchJobScheduleState.COMPLETED, 60)
    assert [j.id for j in client.list_jobs_from_schedule("once")] == ["once:job-1"]
    status, code, values = _error(
        _send(
            client,
            "POST",
            "/jobschedules",
            {"id": "fast", "schedule": {"recurrenceInterval": "PT10S"}} | {"jobSpecification": spec},
        )
    )
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "schedule.recurrenceInterval")


# ----------------------------------------------------------------- job preparation and release
def test_job_preparation_and_release_tasks(client: BatchClient) -> None:
    job = {
        "id": "prep",
        "poolInfo": {"poolId": "p"},
        "jobPreparationTask": {
            "id": "setup",
            "commandLine": "/bin/sh -c 'echo ready > $AZ_BATCH_NODE_SHARED_DIR/prep'",
        },
        "jobReleaseTask": {"id": "teardown", "commandLine": "/bin/sh -c 'rm $AZ_BATCH_NODE_SHARED_DIR/prep'"},
    }
    assert _send(client, "POST", "/jobs", job).status_code == 201
    client.create_task("prep", m.BatchTaskCreateOptions(id="t", command_line="cat $AZ_BATCH_NODE_SHARED_DIR/prep"))
    task = wait_for(lambda: (t := client.get_task("prep", "t")).state == m.BatchTaskState.COMPLETED and t, 60)
    assert task.execution_info.exit_code == 0
    [status] = list(client.list_job_preparation_and_release_task_status("prep"))
    assert status.node_id == task.node_info.node_id and status.pool_id == "p"
    prep = status.job_preparation_task_execution_info
    assert prep.state == m.BatchJobPreparationTaskState.COMPLETED and prep.exit_code == 0
    assert prep.task_root_directory == "tasks/prep/job-1/setup"
    assert status.job_release_task_execution_info is None
    client.begin_terminate_job("prep", m._models.BatchJobTerminateOptions(termination_reason="done")).result()
    wait_for(lambda: client.get_job("prep").state == m.BatchJobState.COMPLETED, 60)
    [status] = list(client.list_job_preparation_and_release_task_status("prep"))
    release = status.job_release_task_execution_info
    assert release.state == m.BatchJobReleaseTaskState.COMPLETED and release.exit_code == 0
    # A job without them: 409, as the service answers.
    client.create_job(m.BatchJobCreateOptions(id="noprep", pool_info=m.BatchPoolInfo(pool_id="p")))
    status_code, code, _ = _error(_send(client, "GET", "/jobs/noprep/jobpreparationandreleasetaskstatus"))
    assert (status_code, code) == (409, "JobPreparationTaskNotSpecified")


def _stdout(client: BatchClient, job: str, task: str) -> str:
    return b"".join(client.download_task_file(job, task, "stdout.txt")).decode()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_a_preparation_task_not_waited_for_and_the_service_it_leaves(client: BatchClient) -> None:
    """``waitForSuccess`` false: the job's tasks start while the preparation task runs. What it starts in the
    background (a "local service on the Node") outlives it, and goes when the node leaves its pool."""
    pool = {"id": "svc", "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": VMC, "targetDedicatedNodes": 1}
    assert _send(client, "POST", "/pools", pool).status_code == 201
    shared = "$AZ_BATCH_NODE_SHARED_DIR"
    prep = (
        f"/bin/sh -c 'setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {shared}/svc.pid; "
        f"until [ -e {shared}/task-ran ]; do sleep 0.05; done; touch {shared}/prep-done'"
    )
    job = {
        "id": "svcjob",
        "poolInfo": {"poolId": "svc"},
        "jobPreparationTask": {"commandLine": prep, "waitForSuccess": False},
    }
    assert _send(client, "POST", "/jobs", job).status_code == 201
    # The preparation task ends only once the task has run: the task runs while it does, not by luck.
    early = (
        f"/bin/sh -c 'until [ -s {shared}/svc.pid ]; do sleep 0.05; done; "
        f"test ! -e {shared}/prep-done && cat {shared}/svc.pid && touch {shared}/task-ran'"
    )
    client.create_task("svcjob", m.BatchTaskCreateOptions(id="early", command_line=early))
    task = wait_for(lambda: (t := client.get_task("svcjob", "early")).state == m.BatchTaskState.COMPLETED and t, 120)
    assert task.execution_info.exit_code == 0  # it ran while the preparation task still did
    pid = int(_stdout(client, "svcjob", "early"))
    wait_for(
        lambda: (
            list(client.list_job_preparation_and_release_task_status("svcjob"))[
                0
            ].job_preparation_task_execution_info.state
            == m.BatchJobPreparationTaskState.COMPLETED
        ),
        60,
    )
    assert _alive(pid)  # the preparation task ended; its service did not
    client.begin_delete_job("svcjob", polling_interval=0.1).result()
    client.begin_delete_pool("svc", polling_interval=0.1).result()
    wait_for(lambda: not _alive(pid), 60)  # the node's VM is gone, and everything on it


def test_terminating_a_job_ends_its_running_preparation_task_before_the_release(client: BatchClient) -> None:
    """Terminate Job "terminates any running Tasks associated with the Job and runs any required Job release
    Tasks": a preparation task not waited for and still running is ended, and the release task (which runs
    where the preparation task "ran and completed") starts only after its end; the job completes after both."""
    shared = "$AZ_BATCH_NODE_SHARED_DIR"
    job = {
        "id": "prepend",
        "poolInfo": {"poolId": "p"},
        "jobPreparationTask": {
            "commandLine": f"/bin/sh -c 'touch {shared}/prepend-started; sleep 60; touch {shared}/prepend-done'",
            "waitForSuccess": False,
        },
        "jobReleaseTask": {"commandLine": f"/bin/sh -c 'test ! -e {shared}/prepend-done'"},
    }
    assert _send(client, "POST", "/jobs", job).status_code == 201
    gate = f"/bin/sh -c 'until [ -e {shared}/prepend-started ]; do sleep 0.05; done'"
    client.create_task("prepend", m.BatchTaskCreateOptions(id="t", command_line=gate))
    wait_for(lambda: client.get_task("prepend", "t").state == m.BatchTaskState.COMPLETED, 60)
    client.begin_terminate_job(
        "prepend", m._models.BatchJobTerminateOptions(termination_reason="done"), polling_interval=0.1
    ).result()
    wait_for(lambda: client.get_job("prepend").state == m.BatchJobState.COMPLETED, 60)
    [status] = list(client.list_job_preparation_and_release_task_status("prepend"))
    prep, release = status.job_preparation_task_execution_info, status.job_release_task_execution_info
    assert prep.state == m.BatchJobPreparationTaskState.COMPLETED
    assert prep.result == m.BatchTaskExecutionResult.FAILURE and prep.failure_info.code == "TaskEnded"
    assert release.state == m.BatchJobReleaseTaskState.COMPLETED and release.exit_code == 0
    assert release.start_time >= prep.end_time
    assert client.get_job("prepend").execution_info.end_time >= release.end_time


def test_a_failing_preparation_task_keeps_the_jobs_tasks_off_the_node(client: BatchClient) -> None:
    job = {"id": "badprep", "poolInfo": {"poolId": "p"}, "jobPreparationTask": {"commandLine": "exit 7"}}
    assert _send(client, "POST", "/jobs", job).status_code == 201
    client.create_task("badprep", m.BatchTaskCreateOptions(id="t", command_line="true"))
    wait_for(lambda: list(client.list_job_preparation_and_release_task_status("badprep")), 60)
    info = wait_for(
        lambda: (
            (
                i := list(client.list_job_preparation_and_release_task_status("badprep"))[0]
            ).job_preparation_task_execution_info.state
            == m.BatchJobPreparationTaskState.COMPLETED
            and i
        ),
        60,
    ).job_preparation_task_execution_info
    assert info.exit_code == 7 and info.result == m.BatchTaskExecutionResult.FAILURE
    time.sleep(1)
    assert client.get_task("badprep", "t").state == m.BatchTaskState.ACTIVE
    client.begin_delete_job("badprep", polling_interval=0.1).result()


# ----------------------------------------------------------------- conditional requests
def test_conditional_requests(client: BatchClient) -> None:
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError

    client.create_job(m.BatchJobCreateOptions(id="cond", pool_info=m.BatchPoolInfo(pool_id="p")))
    etag = client.get_job("cond").etag
    client.update_job(
        "cond", m.BatchJobUpdateOptions(priority=1), etag=etag, match_condition=MatchConditions.IfNotModified
    )
    with pytest.raises(ResourceModifiedError) as info:  # the etag changed with the update
        client.update_job(
            "cond", m.BatchJobUpdateOptions(priority=2), etag=etag, match_condition=MatchConditions.IfNotModified
        )
    assert info.value.status_code == 412 and info.value.error.code == "ConditionNotMet"
    assert client.get_job("cond").priority == 1
    current = client.get_job("cond").etag
    with pytest.raises(HttpResponseError) as not_modified:  # azure-batch 15.1 maps 304 to ResourceModifiedError
        client.get_job("cond", etag=current, match_condition=MatchConditions.IfModified)
    assert not_modified.value.status_code == 304
    assert client.get_job("cond", etag=etag, match_condition=MatchConditions.IfModified).priority == 1
    client.create_task("cond", m.BatchTaskCreateOptions(id="t", command_line="true"))
    task_etag = client.get_task("cond", "t").etag
    with pytest.raises(ResourceModifiedError):
        client.delete_task("cond", "t", etag="0x8D000000000000", match_condition=MatchConditions.IfNotModified)
    client.delete_task("cond", "t", etag=task_etag, match_condition=MatchConditions.IfPresent)


# ----------------------------------------------------------------- task dependencies and exit conditions
def test_task_dependencies(client: BatchClient) -> None:
    assert _send(client, "POST", "/jobs", {"id": "nodeps", "poolInfo": {"poolId": "p"}}).status_code == 201
    status, code, _ = _error(
        _send(client, "POST", "/jobs/nodeps/tasks", {"id": "d", "commandLine": "true", "dependsOn": {"taskIds": ["x"]}})
    )
    assert (status, code) == (409, "TaskDependenciesNotSpecifiedOnJob")
    assert _send(client, "POST", "/jobs", {"id": "deps", "poolInfo": {"poolId": "p"}, "usesTaskDependencies": True})
    tasks = [
        {"id": "last", "commandLine": "true", "dependsOn": {"taskIds": ["fails", "satisfies"], "taskIdRanges": []}},
        {"id": "blocked", "commandLine": "true", "dependsOn": {"taskIds": ["fails"]}},
        {"id": "ranged", "commandLine": "true", "dependsOn": {"taskIdRanges": [{"start": 1, "end": 2}]}},
        {"id": "1", "commandLine": "true"},
        {"id": "2", "commandLine": "sleep 1"},
        {"id": "fails", "commandLine": "exit 2"},
        {
            "id": "satisfies",
            "commandLine": "exit 3",
            "exitConditions": {"exitCodes": [{"code": 3, "exitOptions": {"dependencyAction": "satisfy"}}]},
        },
    ]
    assert _send(client, "POST", "/jobs/deps/addtaskcollection", {"value": tasks}).status_code == 200
    wait_for(lambda: client.get_task("deps", "ranged").state == m.BatchTaskState.COMPLETED, 60)
    assert (
        client.get_task("deps", "2").execution_info.end_time
        <= client.get_task("deps", "ranged").execution_info.start_time
    )
    wait_for(lambda: client.get_task("deps", "satisfies").state == m.BatchTaskState.COMPLETED, 60)
    time.sleep(1)
    # "fails" failed and blocks both tasks that depend on it.
    assert client.get_task("deps", "blocked").state == m.BatchTaskState.ACTIVE
    assert client.get_task("deps", "last").state == m.BatchTaskState.ACTIVE


def test_exit_conditions_act_on_the_job(client: BatchClient) -> None:
    job = {"id": "exits", "poolInfo": {"poolId": "p"}, "onTaskFailure": "performexitoptionsjobaction"}
    assert _send(client, "POST", "/jobs", job).status_code == 201
    conditions = {"exitCodes": [{"code": 4, "exitOptions": {"jobAction": "none"}}]}
    _send(
        client, "POST", "/jobs/exits/tasks", {"id": "tolerated", "commandLine": "exit 4", "exitConditions": conditions}
    )
    wait_for(lambda: client.get_task("exits", "tolerated").state == m.BatchTaskState.COMPLETED, 60)
    time.sleep(0.5)
    assert client.get_job("exits").state == m.BatchJobState.ACTIVE
    _send(client, "POST", "/jobs/exits/tasks", {"id": "fatal", "commandLine": "exit 1"})
    job_after = wait_for(lambda: (j := client.get_job("exits")).state == m.BatchJobState.COMPLETED and j, 60)
    assert job_after.execution_info.termination_reason == "TaskFailed"


def test_job_manager_task_ends_its_job(client: BatchClient) -> None:
    manager = {"id": "jm", "commandLine": "sleep 1", "killJobOnCompletion": True}
    body = {"id": "managed", "poolInfo": {"poolId": "p"}, "jobManagerTask": manager}
    assert _send(client, "POST", "/jobs", body).status_code == 201
    assert [t.id for t in client.list_tasks("managed")] == ["jm"]
    job = wait_for(lambda: (j := client.get_job("managed")).state == m.BatchJobState.COMPLETED and j, 60)
    assert job.execution_info.termination_reason == "JMComplete"
    assert client.get_task("managed", "jm").execution_info.exit_code == 0
