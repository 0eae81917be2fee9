"""The Batch emulator driven through the unmodified azure-batch 15.1 SDK."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from tests.support.emulator import TEST_KEY, emulator_fixture, start_emulator, wait_for

emulator = emulator_fixture(scope="module", allocation_delay=0.2)

VMC = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


def pool_spec(vm: str = "standard_d2s_v3", nodes: int = 1, slots: int = 1) -> m.BatchPoolSpecification:
    return m.BatchPoolSpecification(
        vm_size=vm, virtual_machine_configuration=VMC, target_dedicated_nodes=nodes, task_slots_per_node=slots
    )


def auto_job(client: BatchClient, job_id: str, *, terminate: bool = True, **kwargs: Any) -> None:
    client.create_job(
        m.BatchJobCreateOptions(
            id=job_id,
            pool_info=m.BatchPoolInfo(
                auto_pool_specification=m.BatchAutoPoolSpecification(
                    auto_pool_id_prefix="nb",
                    pool_lifetime_option=m.BatchPoolLifetimeOption.JOB,
                    keep_alive=False,
                    pool=kwargs.pop("pool", pool_spec()),
                )
            ),
            all_tasks_complete_mode=m.BatchAllTasksCompleteMode.TERMINATE_JOB if terminate else None,
            **kwargs,
        )
    )


def wait_task(client: BatchClient, job_id: str, task_id: str, timeout: float = 20.0) -> m.BatchTask:
    return wait_for(lambda: (t := client.get_task(job_id, task_id)).state == m.BatchTaskState.COMPLETED and t, timeout)


def test_bad_key_is_403_authentication_failed(emulator: Any) -> None:
    wrong = BatchClient(emulator.endpoint, AzureNamedKeyCredential(emulator.account, "d3Jvbmcta2V5LXdyb25nLWtleQ=="))
    with pytest.raises(HttpResponseError) as info:
        wrong.get_pool("anything")
    assert info.value.status_code == 403
    assert info.value.error.code == "AuthenticationFailed"


def test_not_found_codes(emulator: Any) -> None:
    client = emulator.client()
    with pytest.raises(ResourceNotFoundError) as info:
        client.get_pool("nope")
    assert info.value.error.code == "PoolNotFound"
    with pytest.raises(ResourceNotFoundError) as info:
        client.get_job("nope")
    assert info.value.error.code == "JobNotFound"


def test_job_with_auto_pool_end_to_end(emulator: Any) -> None:
    client = emulator.client()
    auto_job(client, "e2e", metadata=[m.BatchMetadataItem(name="owner", value="me")])
    with pytest.raises(ResourceExistsError) as info:
        auto_job(client, "e2e")
    assert info.value.error.code == "JobExists"
    pool_id = client.get_job("e2e").execution_info.pool_id
    assert pool_id.startswith("nb_")
    pool = client.get_pool(pool_id)
    assert pool.state == m.BatchPoolState.ACTIVE
    client.create_task(
        "e2e",
        m.BatchTaskCreateOptions(
            id="t1",
            command_line='echo "hello from $AZ_BATCH_TASK_ID in $AZ_BATCH_JOB_ID"; echo $GREETING; '
            'test "$PWD" = "$AZ_BATCH_TASK_WORKING_DIR" && python -c "print(42)"',
            environment_settings=[m.EnvironmentSetting(name="GREETING", value="hi there")],
        ),
    )
    task = wait_task(client, "e2e", "t1")
    assert task.execution_info.exit_code == 0
    assert task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
    assert task.previous_state == m.BatchTaskState.RUNNING
    assert task.node_info.pool_id == pool_id
    props = client.get_task_file_properties("e2e", "t1", "stdout.txt")
    text = b"".join(client.download_task_file("e2e", "t1", "stdout.txt")).decode()
    assert text == "hello from t1 in e2e\nhi there\n42\n"
    assert props.content_length == len(text)
    tail = b"".join(client.download_task_file("e2e", "t1", "stdout.txt", ocp_range=f"bytes=6-{len(text) - 1}"))
    assert tail.decode() == text[6:]
    names = {f.name for f in client.list_task_files("e2e", "t1", recursive=True)}
    assert {"stdout.txt", "stderr.txt", "wd"} <= names
    job = wait_for(lambda: (j := client.get_job("e2e")).state == m.BatchJobState.COMPLETED and j)
    assert job.execution_info.termination_reason == "AllTasksComplete"

    def pool_gone() -> bool:
        try:
            client.get_pool(pool_id)
        except ResourceNotFoundError:
            return True
        return False

    wait_for(pool_gone)
    assert pool_id not in {p.id for p in client.list_pools()}


def test_pool_allocation_nodes_and_counts(emulator: Any) -> None:
    client = emulator.client()
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="steady", vm_size="Standard_D2s_v3", virtual_machine_configuration=VMC, target_dedicated_nodes=2,
            target_low_priority_nodes=1, task_slots_per_node=2,
        )
    )  # fmt: skip
    assert client.get_pool("steady").allocation_state == m.AllocationState.RESIZING
    pool = wait_for(lambda: (p := client.get_pool("steady")).allocation_state == m.AllocationState.STEADY and p)
    assert (pool.current_dedicated_nodes, pool.current_low_priority_nodes) == (2, 1)
    nodes = wait_for(
        lambda: (ns := list(client.list_nodes("steady"))) and all(n.state == m.BatchNodeState.IDLE for n in ns) and ns
    )
    assert sorted(n.is_dedicated for n in nodes) == [False, True, True]
    assert client.get_node("steady", nodes[0].id).id == nodes[0].id
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}
    assert counts["steady"].dedicated.idle == 2 and counts["steady"].low_priority.total == 1
    images = list(client.list_supported_images())
    assert any(i.node_agent_sku_id == "batch.node.ubuntu 22.04" for i in images)
    with pytest.raises(ResourceExistsError) as info:
        client.create_pool(
            m.BatchPoolCreateOptions(id="steady", vm_size="standard_d2s_v3", virtual_machine_configuration=VMC)
        )
    assert info.value.error.code == "PoolExists"
    with pytest.raises(HttpResponseError) as info:
        client.create_pool(
            m.BatchPoolCreateOptions(id="bad", vm_size="standard_nope", virtual_machine_configuration=VMC)
        )
    assert info.value.status_code == 400 and info.value.error.code == "InvalidPropertyValue"
    assert "vmSize" in str(info.value)
    client.begin_resize_pool(
        "steady", m.BatchPoolResizeOptions(target_dedicated_nodes=1, target_low_priority_nodes=0), polling_interval=0.1
    ).result()
    wait_for(lambda: len(list(client.list_nodes("steady"))) == 1)
    client.begin_delete_pool("steady", polling_interval=0.1).result()


def test_quota_gives_resize_error_and_no_nodes(tmp_path: Path) -> None:
    with start_emulator(tmp_path, core_quota=4) as emu:
        client = emu.client()
        client.create_pool(
            m.BatchPoolCreateOptions(
                id="small", vm_size="standard_d2s_v3", virtual_machine_configuration=VMC, target_dedicated_nodes=1
            )
        )
        auto_job(client, "big", pool=pool_spec("standard_d16s_v3", nodes=1))
        client.create_task("big", m.BatchTaskCreateOptions(id="t", command_line="true"))
        pool_id = client.get_job("big").execution_info.pool_id
        pool = wait_for(lambda: (p := client.get_pool(pool_id)).allocation_state == m.AllocationState.STEADY and p)
        assert pool.current_dedicated_nodes == 0
        assert [e.code for e in pool.resize_errors] == ["AccountCoreQuotaReached"]
        assert pool.resize_errors[0].message
        small = wait_for(lambda: (p := client.get_pool("small")).allocation_state == m.AllocationState.STEADY and p)
        assert small.current_dedicated_nodes == 1 and not small.resize_errors
        time.sleep(0.5)
        assert client.get_task("big", "t").state == m.BatchTaskState.ACTIVE


def test_task_collection_of_250(emulator: Any) -> None:
    client = emulator.client()
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="many",
            vm_size="standard_d4s_v3",
            virtual_machine_configuration=VMC,
            target_dedicated_nodes=2,
            task_slots_per_node=8,
        )
    )
    client.create_job(m.BatchJobCreateOptions(id="many", pool_info=m.BatchPoolInfo(pool_id="many")))
    tasks = [m.BatchTaskCreateOptions(id=f"h{i}", command_line=f"echo {i}") for i in range(250)]
    result = client.create_tasks("many", tasks, max_concurrency=4)
    assert len(result.result_values) == 250
    assert all(r.status == m.BatchTaskAddStatus.SUCCESS for r in result.result_values)
    again = client.create_task_collection("many", m.BatchTaskGroup(task_values=tasks[:3]))
    assert [r.error.code for r in again.result_values] == ["TaskExists"] * 3
    wait_for(lambda: client.get_job_task_counts("many").task_counts.completed == 250, timeout=40)
    counts = client.get_job_task_counts("many")
    assert counts.task_counts.succeeded == 250 and counts.task_slot_counts.completed == 250


def test_list_filter_select_and_paging(emulator: Any) -> None:
    client = emulator.client()
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="lists",
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=VMC,
            target_dedicated_nodes=1,
            task_slots_per_node=4,
        )
    )
    client.create_job(m.BatchJobCreateOptions(id="lists", pool_info=m.BatchPoolInfo(pool_id="lists")))
    for i in range(5):
        client.create_task("lists", m.BatchTaskCreateOptions(id=f"ok{i}", command_line="true"))
    client.create_task("lists", m.BatchTaskCreateOptions(id="bad", command_line="exit 3"))
    client.create_task("lists", m.BatchTaskCreateOptions(id="slow", command_line="sleep 30"))
    wait_for(lambda: client.get_task("lists", "slow").state == m.BatchTaskState.RUNNING)
    wait_for(lambda: client.get_job_task_counts("lists").task_counts.completed == 6)
    completed = list(client.list_tasks("lists", filter="state eq 'completed'", select=["id", "state", "executionInfo"]))
    assert sorted(t.id for t in completed) == ["bad"] + [f"ok{i}" for i in range(5)]
    assert all(t.command_line is None for t in completed)
    failed = list(client.list_tasks("lists", filter="state eq 'completed' and executionInfo/result eq 'failure'"))
    assert [t.id for t in failed] == ["bad"]
    assert failed[0].execution_info.exit_code == 3
    assert failed[0].execution_info.failure_info.category == "usererror"
    either = list(client.list_tasks("lists", filter="state eq 'running' or id eq 'bad'"))
    assert sorted(t.id for t in either) == ["bad", "slow"]
    paged = list(client.list_tasks("lists", max_results=2))
    assert len(paged) == 7 and len({t.id for t in paged}) == 7
    pages = [r for r in emulator.requests() if r["path"] == "/jobs/lists/tasks" and r["method"] == "GET"]
    assert any("$skiptoken" in r["query"] for r in pages)
    assert {j.id for j in client.list_jobs(filter="state eq 'active'", select=["id"])} >= {"lists"}
    client.terminate_task("lists", "slow")
    slow = wait_task(client, "lists", "slow")
    assert slow.execution_info.failure_info.code == "TaskEnded"


def test_terminate_job_kills_running_task_promptly(emulator: Any) -> None:
    client = emulator.client()
    auto_job(client, "term", terminate=False)
    client.create_task("term", m.BatchTaskCreateOptions(id="sleepy", command_line="sleep 100"))
    wait_for(lambda: client.get_task("term", "sleepy").state == m.BatchTaskState.RUNNING)
    started = time.monotonic()
    # azure-batch 15.1 cannot send a terminate without options (empty options are falsy: ValueError)
    client.begin_terminate_job("term", {"terminateReason": "UserTerminate"}, polling_interval=0.1).result()
    job = wait_for(lambda: (j := client.get_job("term")).state == m.BatchJobState.COMPLETED and j, timeout=10)
    assert time.monotonic() - started < 5
    assert job.execution_info.termination_reason == "UserTerminate"
    task = client.get_task("term", "sleepy")
    assert task.state == m.BatchTaskState.COMPLETED
    assert task.execution_info.failure_info.code == "TaskEnded"
    with pytest.raises(ResourceExistsError):
        client.create_task("term", m.BatchTaskCreateOptions(id="late", command_line="true"))


def test_job_max_wall_clock_time(emulator: Any) -> None:
    client = emulator.client()
    auto_job(client, "jwall", terminate=False, constraints=m.BatchJobConstraints(max_wall_clock_time="PT1S"))
    client.create_task("jwall", m.BatchTaskCreateOptions(id="forever", command_line="sleep 100"))
    job = wait_for(lambda: (j := client.get_job("jwall")).state == m.BatchJobState.COMPLETED and j, timeout=10)
    assert job.execution_info.termination_reason == "MaxWallClockTimeExpiry"
    task = client.get_task("jwall", "forever")
    assert task.state in (m.BatchTaskState.COMPLETED, m.BatchTaskState.ACTIVE)


def test_task_max_wall_clock_time_and_retries(emulator: Any) -> None:
    client = emulator.client()
    auto_job(client, "tconstraints", pool=pool_spec(slots=4))
    client.create_task(
        "tconstraints",
        m.BatchTaskCreateOptions(
            id="timeout", command_line="sleep 100", constraints=m.BatchTaskConstraints(max_wall_clock_time="PT0.5S")
        ),
    )
    client.create_task(
        "tconstraints",
        m.BatchTaskCreateOptions(
            id="flaky",
            command_line='n=$(cat ../count 2>/dev/null || echo 0); echo $((n+1)) > ../count; test "$n" -ge 2',
            constraints=m.BatchTaskConstraints(max_task_retry_count=3),
        ),
    )
    client.create_task(
        "tconstraints",
        m.BatchTaskCreateOptions(
            id="doomed", command_line="exit 7", constraints=m.BatchTaskConstraints(max_task_retry_count=2)
        ),
    )
    timeout = wait_task(client, "tconstraints", "timeout")
    assert timeout.execution_info.result == m.BatchTaskExecutionResult.FAILURE
    assert timeout.execution_info.failure_info.code == "TaskEnded"
    flaky = wait_task(client, "tconstraints", "flaky")
    assert flaky.execution_info.exit_code == 0 and flaky.execution_info.retry_count == 2
    doomed = wait_task(client, "tconstraints", "doomed")
    assert doomed.execution_info.exit_code == 7 and doomed.execution_info.retry_count == 2
    assert doomed.execution_info.failure_info.code == "FailureExitCode"


class _BlobSink(BaseHTTPRequestHandler):
    """A stand-in for a blob container: stores PUT bodies, serves GETs, 403 without a sig."""

    store: dict[str, bytes] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def do_PUT(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = "sig=" in self.path and self.headers.get("x-ms-blob-type") == "BlockBlob"
        if ok:
            self.store[self.path.split("?")[0]] = body
        self.send_response(201 if ok else 403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        body = self.store.get(self.path.split("?")[0])
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture(scope="module")
def blob_sink() -> Any:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BlobSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _BlobSink.store
    server.shutdown()
    server.server_close()


def test_resource_files_and_output_files(emulator: Any, blob_sink: Any) -> None:
    base, store = blob_sink
    store["/c/input.txt"] = b"input data\n"
    client = emulator.client()
    auto_job(client, "files", terminate=False)
    container = m.OutputFileBlobContainerDestination(container_url=f"{base}/c?sv=1&sig=abc", path="runs/1")
    client.create_task(
        "files",
        m.BatchTaskCreateOptions(
            id="io",
            command_line="cat in/input.txt; mkdir -p out; echo result > out/a.txt; echo more > out/b.txt",
            resource_files=[m.ResourceFile(http_url=f"{base}/c/input.txt?sig=x", file_path="in/input.txt")],
            output_files=[
                m.OutputFile(
                    file_pattern="../std*.txt",
                    destination=m.OutputFileDestination(container=container),
                    upload_options=m.OutputFileUploadConfiguration(
                        upload_condition=m.OutputFileUploadCondition.TASK_COMPLETION
                    ),
                ),
                m.OutputFile(
                    file_pattern="out/a.txt",
                    destination=m.OutputFileDestination(
                        container=m.OutputFileBlobContainerDestination(
                            container_url=f"{base}/c?sig=abc", path="single.txt"
                        )
                    ),
                    upload_options=m.OutputFileUploadConfiguration(
                        upload_condition=m.OutputFileUploadCondition.TASK_SUCCESS
                    ),
                ),
                m.OutputFile(
                    file_pattern="out/*.txt",
                    destination=m.OutputFileDestination(
                        container=m.OutputFileBlobContainerDestination(container_url=f"{base}/c?sig=abc")
                    ),
                    upload_options=m.OutputFileUploadConfiguration(
                        upload_condition=m.OutputFileUploadCondition.TASK_FAILURE
                    ),
                ),
            ],
        ),
    )
    task = wait_task(client, "files", "io")
    assert task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS, task.execution_info.failure_info
    assert store["/c/runs/1/stdout.txt"] == b"input data\n"
    assert "/c/runs/1/stderr.txt" in store
    assert store["/c/single.txt"] == b"result\n"
    assert "/c/b.txt" not in store  # taskfailure condition: not uploaded on success

    client.create_task(
        "files",
        m.BatchTaskCreateOptions(
            id="missing", command_line="true",
            resource_files=[m.ResourceFile(http_url=f"{base}/c/none.txt?sig=x", file_path="none.txt")],
        ),
    )  # fmt: skip
    missing = wait_task(client, "files", "missing")
    assert missing.execution_info.failure_info.code == "BlobNotFound"
    assert missing.execution_info.failure_info.category == "usererror"
    client.create_task(
        "files",
        m.BatchTaskCreateOptions(
            id="denied", command_line="echo x",
            output_files=[m.OutputFile(
                file_pattern="../stdout.txt",
                destination=m.OutputFileDestination(container=m.OutputFileBlobContainerDestination(container_url=f"{base}/c")),
                upload_options=m.OutputFileUploadConfiguration(upload_condition=m.OutputFileUploadCondition.TASK_COMPLETION),
            )],
        ),
    )  # fmt: skip
    denied = wait_task(client, "files", "denied")
    assert denied.execution_info.failure_info.code == "FileUploadAccessDenied"


def test_record_file_has_every_request_and_never_the_key(emulator: Any) -> None:
    client = emulator.client()
    before = len(emulator.requests())
    list(client.list_pools())
    with pytest.raises(ResourceNotFoundError):
        client.get_job("does-not-exist")
    records = emulator.requests()[before:]
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("GET", "/pools", 200),
        ("GET", "/jobs/does-not-exist", 404),
    ]
    assert records[0]["query"]["api-version"] == ["2025-06-01"]
    assert records[0]["headers"]["Authorization"].startswith(f"SharedKey {emulator.account}:")
    assert TEST_KEY not in emulator.record_path.read_text()
    assert TEST_KEY not in emulator.log()
