"""Where the live service parts from its OpenAPI description, the emulator answers as the service does
(issue 20). Each test names the service behaviour it reproduces and where it is documented or recorded:
"recorded" means ../shared/reference/azure-batch-recordings (live service answers), "example" Microsoft's
examples in ../shared/reference/batch-rest-2025-06-01/examples, "REST reference" the Batch REST docs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from batchmagic.emulator import Emulator
from tests.support.emulator import TEST_KEY, wait_for

IMAGE = {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404"}
AGENT = "batch.node.ubuntu 24.04"
VMC: dict[str, Any] = {"imageReference": IMAGE, "nodeAgentSKUId": AGENT}


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    workdir: Path = tmp_path_factory.mktemp("service")
    with Emulator(key=TEST_KEY, allocation_delay=0.3, workdir=workdir, record=workdir / "requests.jsonl") as emu:
        yield emu


@pytest.fixture(scope="module")
def client(emu: Emulator) -> BatchClient:
    return BatchClient(emu.url, AzureNamedKeyCredential("devbatch", TEST_KEY))


def _send(client: BatchClient, method: str, path: str, body: Any = None) -> Any:
    request = HttpRequest(method, f"{path}?api-version=2025-06-01", json=body)
    try:
        return client.send_request(request)
    except HttpResponseError as err:
        return err.response


def _error(response: Any) -> tuple[int, str, dict[str, str]]:
    body = response.json()
    return response.status_code, body["code"], {v["key"]: v["value"] for v in body.get("values", [])}


def _pool(pool_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": pool_id, "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": dict(VMC), **extra}


def _idle_node(client: BatchClient, pool_id: str) -> m.BatchNode:
    nodes = wait_for(lambda: [n for n in client.list_nodes(pool_id) if n.state == m.BatchNodeState.IDLE], 30)
    return nodes[0]


# ----------------------------------------------------------------- enum spellings on the wire
def test_enums_the_service_spells_in_lower_case_come_back_as_sdk_enums(emu: Emulator, client: BatchClient) -> None:
    """Recorded and in the SDK 15.1 enums: ``jobDefaultOrder`` ``creationtime``, ``securityType``
    ``confidentialvm``; REST reference HostEndpointSettingsModeTypes: ``Audit``/``Enforce`` (the description
    says ``automatic``/``manual``). The SDK maps each to its enum only when spelt as the service does."""
    vmc = m.VirtualMachineConfiguration(
        image_reference=m.BatchVmImageReference(**IMAGE),
        node_agent_sku_id=AGENT,
        security_profile=m.SecurityProfile(
            security_type=m.SecurityTypes.CONFIDENTIAL_VM,
            encryption_at_host=True,
            uefi_settings=m.BatchUefiSettings({"secureBootEnabled": True, "vTpmEnabled": True}),
            proxy_agent_settings=m.ProxyAgentSettings(
                enabled=True, imds=m.HostEndpointSettings(mode=m.HostEndpointSettingsModeTypes.AUDIT)
            ),
        ),
    )
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="enums",
            vm_size="Standard_DC2as_v5",
            virtual_machine_configuration=vmc,
            task_scheduling_policy=m.BatchTaskSchedulingPolicy(
                node_fill_type=m.BatchNodeFillType.PACK, job_default_order=m.BatchJobDefaultOrder.CREATION_TIME
            ),
        )
    )
    pool = client.get_pool("enums")
    assert pool.task_scheduling_policy.job_default_order is m.BatchJobDefaultOrder.CREATION_TIME
    security = pool.virtual_machine_configuration.security_profile
    assert security.security_type is m.SecurityTypes.CONFIDENTIAL_VM
    assert security.proxy_agent_settings.imds.mode is m.HostEndpointSettingsModeTypes.AUDIT
    raw = emu.state.get_pool("enums")
    assert raw["taskSchedulingPolicy"]["jobDefaultOrder"] == "creationtime"
    assert raw["virtualMachineConfiguration"]["securityProfile"]["securityType"] == "confidentialvm"
    # Any case goes in (the service's enum parsing ignores case); the service's spelling comes out.
    body = _pool("enums2", taskSchedulingPolicy={"nodeFillType": "PACK", "jobDefaultOrder": "CreationTime"})
    assert _send(client, "POST", "/pools", body).status_code == 201
    assert emu.state.get_pool("enums2")["taskSchedulingPolicy"] == {
        "nodeFillType": "pack",
        "jobDefaultOrder": "creationtime",
    }


def test_node_states_are_lower_case_on_the_wire(emu: Emulator, client: BatchClient) -> None:
    """REST reference BatchNodeState and the SDK's enum: ``waitingforstarttask``, ``starttaskfailed``."""
    start = m.BatchStartTask(command_line="exit 1", wait_for_success=True)
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="st",
            vm_size="Standard_D2s_v3",
            virtual_machine_configuration=m.VirtualMachineConfiguration(
                image_reference=m.BatchVmImageReference(**IMAGE), node_agent_sku_id=AGENT
            ),
            target_dedicated_nodes=1,
            start_task=start,
        )
    )
    node = wait_for(lambda: [n for n in client.list_nodes("st") if n.state == m.BatchNodeState.START_TASK_FAILED], 30)
    assert emu.state.get_node("st", node[0].id)["state"] == "starttaskfailed"
    counts = next(c for c in client.list_pool_node_counts() if c.pool_id == "st")
    assert counts.dedicated.start_task_failed == 1


# ----------------------------------------------------------------- pool creation as strict as the service
def test_a_subnet_in_another_subscription_is_refused(emu: Emulator, client: BatchClient) -> None:
    """Recorded (create_pools.json): POST /pools with a subnetId in another subscription answers 400
    InvalidPropertyValue naming ``subnetId``; docs ("Create an Azure Batch pool in a virtual network"):
    the virtual network must be in the account's subscription."""
    other = (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/test"
        "/providers/Microsoft.Network/virtualNetworks/vnet1/subnets/subnet1"
    )
    response = _send(client, "POST", "/pools", _pool("net-other", networkConfiguration={"subnetId": other}))
    status, code, values = _error(response)
    assert (status, code, values["PropertyName"], values["PropertyValue"]) == (
        400,
        "InvalidPropertyValue",
        "subnetId",
        other,
    )
    own = other.replace("00000000-0000-0000-0000-000000000000", emu.state.subscription)
    assert _send(client, "POST", "/pools", _pool("net-own", networkConfiguration={"subnetId": own})).status_code == 201
    assert (
        _error(_send(client, "POST", "/pools", _pool("net-bad", networkConfiguration={"subnetId": "subnet1"})))[0]
        == 400
    )


def test_a_malformed_virtual_machine_image_id_is_refused(emu: Emulator, client: BatchClient) -> None:
    """Recorded (create_pools.json): an image id with ``.../gallery/...`` (not ``galleries``) answers 400
    InvalidPropertyValue naming ``virtualMachineImageId``."""
    sub = emu.state.subscription
    bad = (
        f"/subscriptions/{sub}/resourceGroups/test"
        "/providers/Microsoft.Compute/gallery/FakeGallery/images/FakeImage/versions/version"
    )
    body = _pool(
        "img-bad",
        virtualMachineConfiguration={"imageReference": {"virtualMachineImageId": bad}, "nodeAgentSKUId": AGENT},
    )
    status, code, values = _error(_send(client, "POST", "/pools", body))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "virtualMachineImageId")
    good = bad.replace("/gallery/", "/galleries/")
    body["id"], body["virtualMachineConfiguration"]["imageReference"]["virtualMachineImageId"] = "img-good", good
    assert _send(client, "POST", "/pools", body).status_code == 201


def test_the_windows_images_the_service_lists_are_supported(client: BatchClient) -> None:
    """The service lists Windows Server skus such as ``2022-datacenter-g2`` (batch.node.windows amd64)."""
    skus = {i.image_reference.sku for i in client.list_supported_images() if i.os_type == m.OSType.WINDOWS}
    assert {"2022-datacenter-g2", "2019-datacenter", "2025-datacenter-g2"} <= skus
    windows = {
        "imageReference": {
            "publisher": "MicrosoftWindowsServer",
            "offer": "WindowsServer",
            "sku": "2022-datacenter-g2",
        },
        "nodeAgentSKUId": "batch.node.windows amd64",
    }
    assert _send(client, "POST", "/pools", _pool("win", virtualMachineConfiguration=windows)).status_code == 201


# ----------------------------------------------------------------- replace is not update
def test_replace_pool_properties_removes_an_omitted_start_task(client: BatchClient) -> None:
    """REST reference, Pools - Replace Pool Properties: "if the Pool has a StartTask associated with it
    and if StartTask is not specified with this request, then the Batch service will remove the existing
    StartTask." PATCH (update) keeps what it does not name."""
    body = _pool("replace", startTask={"commandLine": "true"}, metadata=[{"name": "a", "value": "1"}])
    assert _send(client, "POST", "/pools", body).status_code == 201
    client.update_pool("replace", m.BatchPoolUpdateOptions(metadata=[m.BatchMetadataItem(name="b", value="2")]))
    assert client.get_pool("replace").start_task.command_line == "true"
    client.replace_pool_properties(
        "replace",
        m.BatchPoolReplaceOptions(
            application_package_references=[], metadata=[m.BatchMetadataItem(name="c", value="3")]
        ),
    )
    pool = client.get_pool("replace")
    assert pool.start_task is None
    assert [(i.name, i.value) for i in pool.metadata] == [("c", "3")]


def test_put_job_cannot_take_terminatejob_back_to_noaction(client: BatchClient) -> None:
    """A job's completion behaviour cannot go from ``terminatejob`` back to ``noaction``: a PUT that omits
    ``onAllTasksComplete`` asks for the default (``noaction``) and the service answers 400."""
    assert _send(client, "POST", "/pools", _pool("jobpool")).status_code == 201
    job = {"id": "tj", "poolInfo": {"poolId": "jobpool"}, "onAllTasksComplete": "terminatejob"}
    assert _send(client, "POST", "/jobs", job).status_code == 201
    status, code, values = _error(_send(client, "PUT", "/jobs/tj", {"poolInfo": {"poolId": "jobpool"}, "priority": 5}))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "onAllTasksComplete")
    assert client.get_job("tj").all_tasks_complete_mode == m.BatchAllTasksCompleteMode.TERMINATE_JOB
    assert _send(client, "DELETE", "/jobs/tj").status_code == 202


# ----------------------------------------------------------------- nodes
def test_node_endpoints_come_from_the_pools_inbound_nat_pools(client: BatchClient) -> None:
    """Recorded (tasks-files_sync_2025-06-01.json): a pool with NAT pool ``ruleName`` (frontend ports
    from 15000, backend 3389) lists node endpoint ``ruleName.0``, frontend 15000, backend 3389; the
    remote login settings point at the endpoint that reaches SSH."""
    nat = [
        {
            "name": "ssh",
            "protocol": "tcp",
            "backendPort": 22,
            "frontendPortRangeStart": 15000,
            "frontendPortRangeEnd": 15099,
        },
        {
            "name": "app",
            "protocol": "udp",
            "backendPort": 5000,
            "frontendPortRangeStart": 16000,
            "frontendPortRangeEnd": 16099,
        },
    ]
    network = {
        "endpointConfiguration": {"inboundNATPools": nat},
        "publicIPAddressConfiguration": {"provision": "batchmanaged", "ipFamilies": ["IPv4", "IPv6"]},
    }
    assert (
        _send(client, "POST", "/pools", _pool("nat", targetDedicatedNodes=2, networkConfiguration=network)).status_code
        == 201
    )
    wait_for(lambda: len([n for n in client.list_nodes("nat") if n.state == m.BatchNodeState.IDLE]) == 2, 30)
    nodes = sorted(client.list_nodes("nat"), key=lambda n: n.endpoint_configuration.inbound_endpoints[0].name)
    endpoints = [
        [(e.name, e.protocol, e.frontend_port, e.backend_port) for e in n.endpoint_configuration.inbound_endpoints]
        for n in nodes
    ]
    assert endpoints == [
        [("ssh.0", m.InboundEndpointProtocol.TCP, 15000, 22), ("app.0", m.InboundEndpointProtocol.UDP, 16000, 5000)],
        [("ssh.1", m.InboundEndpointProtocol.TCP, 15001, 22), ("app.1", m.InboundEndpointProtocol.UDP, 16001, 5000)],
    ]
    assert all(n.ipv6_address for n in nodes)
    login = client.get_node_remote_login_settings("nat", nodes[1].id)
    assert (login.remote_login_port, login.ipv6_remote_login_port) == (15001, 15001)
    assert login.ipv6_remote_login_ip_address


def test_without_nat_pools_a_node_has_the_default_ssh_endpoint_and_no_ipv6(client: BatchClient) -> None:
    assert _send(client, "POST", "/pools", _pool("plain", targetDedicatedNodes=1)).status_code == 201
    node = _idle_node(client, "plain")
    (endpoint,) = node.endpoint_configuration.inbound_endpoints
    assert (endpoint.name, endpoint.backend_port, endpoint.frontend_port) == ("SSHRule.0", 22, 50000)
    assert node.ipv6_address is None
    assert client.get_node_remote_login_settings("plain", node.id).ipv6_remote_login_port is None


def test_node_extensions_list_the_batch_extension_and_the_pools_own(client: BatchClient) -> None:
    """Example Nodes_ListNodeExtensions.json: ``batchNodeExtension`` first, then the pool's extensions,
    each with a succeeded provisioning status; protected settings are never returned."""
    vmc = dict(VMC)
    vmc["extensions"] = [
        {
            "name": "mon",
            "publisher": "Microsoft.Azure.Monitor",
            "type": "AzureMonitorLinuxAgent",
            "typeHandlerVersion": "1.0",
            "protectedSettings": {"key": "secret"},
        }
    ]
    assert (
        _send(
            client, "POST", "/pools", _pool("ext", targetDedicatedNodes=1, virtualMachineConfiguration=vmc)
        ).status_code
        == 201
    )
    node = _idle_node(client, "ext")
    extensions = list(client.list_node_extensions("ext", node.id))
    assert [e.vm_extension.name for e in extensions] == ["batchNodeExtension", "mon"]
    assert all(e.instance_view.statuses[0].level == m.StatusLevelTypes.INFO for e in extensions)
    assert extensions[1].vm_extension.protected_settings is None
    assert client.get_node_extension("ext", node.id, "mon").vm_extension.type == "AzureMonitorLinuxAgent"


# ----------------------------------------------------------------- limits
def _big_task(i: int, size: int) -> m.BatchTaskCreateOptions:
    return m.BatchTaskCreateOptions(
        id=f"t{i:03d}", command_line="true", environment_settings=[m.EnvironmentSetting(name="PAD", value="x" * size)]
    )


def test_a_task_collection_over_one_megabyte_is_refused_and_create_tasks_splits_it(
    emu: Emulator, client: BatchClient
) -> None:
    """REST reference, Tasks - Create Task Collection: "The total serialized size of this collection must
    be less than 1MB. If it is greater than 1MB ... the request will fail with code 'RequestBodyTooLarge'
    and should be retried again with fewer Tasks." The SDK's create_tasks halves its chunk on that code."""
    assert _send(client, "POST", "/pools", _pool("limits")).status_code == 201
    client.create_job(m.BatchJobCreateOptions(id="limits", pool_info=m.BatchPoolInfo(pool_id="limits")))
    body = {"value": [_big_task(i, 12_000).as_dict() for i in range(100)]}
    assert len(json.dumps(body)) > 1024 * 1024
    status, code, _ = _error(_send(client, "POST", "/jobs/limits/addtaskcollection", body))
    assert (status, code) == (413, "RequestBodyTooLarge")
    result = client.create_tasks("limits", [_big_task(i, 12_000) for i in range(150)])
    assert all(r.status == m.BatchTaskAddStatus.SUCCESS for r in result.result_values)
    assert len(list(client.list_tasks("limits", select=["id"]))) == 150
    assert emu.record_path is not None
    lines = [json.loads(line) for line in emu.record_path.read_text().splitlines()]
    refused = [r for r in lines if r["path"].endswith("/addtaskcollection") and r["status"] == 413]
    assert len(refused) >= 2  # ours, then the SDK's first 100-task chunk before it split


# ----------------------------------------------------------------- time
def test_a_job_schedules_first_job_exists_when_the_create_returns(client: BatchClient) -> None:
    """REST reference, Job Schedules: without ``doNotRunUntil`` the first job is created at once."""
    client.create_job_schedule(
        m.BatchJobScheduleCreateOptions(
            id="now",
            schedule=m.BatchJobScheduleConfiguration(recurrence_interval="PT1H"),
            job_specification=m.BatchJobSpecification(pool_info=m.BatchPoolInfo(pool_id="jobpool")),
        )
    )
    assert [j.id for j in client.list_jobs_from_schedule("now")] == ["now:job-1"]
    assert client.get_job_schedule("now").execution_info.recent_job.id == "now:job-1"
    assert _send(client, "POST", "/jobschedules/now/terminate").status_code == 202


def test_a_task_added_to_an_idle_node_is_picked_up_before_the_next_read(client: BatchClient) -> None:
    assert _send(client, "POST", "/pools", _pool("pick", targetDedicatedNodes=1)).status_code == 201
    _idle_node(client, "pick")
    client.create_job(m.BatchJobCreateOptions(id="pick", pool_info=m.BatchPoolInfo(pool_id="pick")))
    client.create_task("pick", m.BatchTaskCreateOptions(id="t", command_line="sleep 1"))
    assert client.get_task("pick", "t").state != m.BatchTaskState.ACTIVE


def test_stop_resize_passes_through_stopping(emu: Emulator, client: BatchClient) -> None:
    """Recorded (scale_pools.json): after stopresize the pool is ``stopping``, then ``steady`` with its
    targets unchanged and a ``ResizeStopped`` resize error."""
    emu.state.allocation_delay = 3.0
    try:
        assert _send(client, "POST", "/pools", _pool("stop", targetLowPriorityNodes=2)).status_code == 201
        assert _send(client, "POST", "/pools/stop/stopresize").status_code == 202
        assert client.get_pool("stop").allocation_state == m.AllocationState.STOPPING
        pool = wait_for(lambda: (p := client.get_pool("stop")).allocation_state == m.AllocationState.STEADY and p, 10)
    finally:
        emu.state.allocation_delay = 0.3
    assert pool.target_low_priority_nodes == 2
    assert [e.code for e in pool.resize_errors] == ["ResizeStopped"]
    assert "low priority" in pool.resize_errors[0].message


# ----------------------------------------------------------------- secrets
def test_a_blobfuse_mounts_account_key_is_never_returned(client: BatchClient) -> None:
    """Seen on the live service (issue 20): GET pool leaves out a blobfuse mount's ``accountKey``, as it
    does user and registry passwords."""
    mount = {
        "azureBlobFileSystemConfiguration": {
            "accountName": "acct",
            "containerName": "c",
            "accountKey": "c2VjcmV0",
            "relativeMountPath": "data",
        }
    }
    assert _send(client, "POST", "/pools", _pool("mount", mountConfiguration=[mount])).status_code == 201
    config = client.get_pool("mount").mount_configuration[0].azure_blob_file_system_configuration
    assert (config.account_name, config.account_key) == ("acct", None)
    assert "c2VjcmV0" not in json.dumps(_send(client, "GET", "/pools/mount").json())


# ----------------------------------------------------------------- documented string and size limits
def _create(client: BatchClient, kind: str, **fields: Any) -> Any:
    """POST a minimal resource of ``kind`` with ``fields`` set."""
    if kind == "pool":
        return _send(client, "POST", "/pools", {**_pool("x"), **fields})
    if kind == "job":
        return _send(client, "POST", "/jobs", {"poolInfo": {"poolId": "jobpool"}, **fields})
    if kind == "task":
        return _send(client, "POST", "/jobs/limitjob/tasks", {"commandLine": "true", **fields})
    spec = {"schedule": {"recurrenceInterval": "PT1H"}, "jobSpecification": {"poolInfo": {"poolId": "jobpool"}}}
    return _send(client, "POST", "/jobschedules", {**spec, **fields})


@pytest.fixture(scope="module")
def limit_job(client: BatchClient) -> str:
    assert _send(client, "POST", "/pools", _pool("jobpool")).status_code in (201, 409)
    assert _send(client, "POST", "/jobs", {"id": "limitjob", "poolInfo": {"poolId": "jobpool"}}).status_code == 201
    return "limitjob"


@pytest.mark.parametrize("kind", ["pool", "job", "task", "schedule"])
def test_ids_and_display_names_are_held_to_the_documented_limits(
    client: BatchClient, limit_job: str, kind: str
) -> None:
    """REST reference, the id and displayName of every create body: an id is letters, digits, hyphens
    and underscores, at most 64 characters, unique in the account ignoring case; a display name at most
    1024 characters. A bad one is 400 InvalidPropertyValue naming it; a case-only twin is <Kind>Exists."""
    for bad in ("x" * 65, "has.dot", "has space", "ünï"):
        status, code, values = _error(_create(client, kind, id=bad))
        assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "id"), bad
    status, code, values = _error(_create(client, kind, id=f"long-{kind}", displayName="n" * 1025))
    assert (status, code, values["PropertyName"]) == (400, "InvalidPropertyValue", "displayName")
    ok = f"Limit-{kind}-" + "x" * (64 - len(f"Limit-{kind}-"))
    assert _create(client, kind, id=ok, displayName="n" * 1024).status_code == 201
    exists = {"pool": "PoolExists", "job": "JobExists", "task": "TaskExists", "schedule": "JobScheduleExists"}
    assert _error(_create(client, kind, id=ok.upper()))[:2] == (409, exists[kind])


def test_a_task_collection_holds_at_most_100_tasks(client: BatchClient) -> None:
    """REST reference, BatchTaskGroup.value: "The maximum count of Tasks is 100"."""
    assert _send(client, "POST", "/pools", _pool("jobpool")).status_code in (201, 409)
    _send(client, "POST", "/jobs", {"id": "hundred", "poolInfo": {"poolId": "jobpool"}})
    tasks = [{"id": f"t{i}", "commandLine": "true"} for i in range(101)]
    assert _error(_send(client, "POST", "/jobs/hundred/addtaskcollection", {"value": tasks}))[0] == 400
    assert _send(client, "POST", "/jobs/hundred/addtaskcollection", {"value": tasks[:100]}).status_code == 200
