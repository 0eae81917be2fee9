"""The emulator's responses against real Batch service recordings.

For each recorded operation we implement, the test re-creates it against the emulator (through the
SDK's signed pipeline) and compares the status code, the presence of the recorded headers, and the
response body's field names and JSON types, recursively, for every field the recording has.

Deliberate differences (listed in ``IGNORED``): fields of features the emulator does not model
(Windows/cloudServiceConfiguration pools, job preparation/release tasks, certificates, user
accounts, autoscale), and headers of the transport (``Transfer-Encoding``, ``Date``, ``Server``...).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from tests.support.emulator import emulator_fixture, wait_for
from tests.support.reference import require_reference

RECORDINGS = require_reference("azure-batch-recordings")
API = "api-version=2025-06-01"

emulator = emulator_fixture(scope="module", allocation_delay=0.2)

#: Recorded fields that the emulator deliberately leaves out (features it does not model).
IGNORED = {
    "jobPreparationTask", "jobReleaseTask", "cloudServiceConfiguration", "certificateReferences",
    "userAccounts", "autoScaleFormula", "autoScaleEvaluationInterval", "windowsConfiguration",
    "dataDisks", "diskEncryptionConfiguration", "displayName", "capabilities", "batchSupportEndOfLife", "lastBootTime",
}  # fmt: skip
#: Headers of the transport rather than of the Batch protocol.
TRANSPORT_HEADERS = {"transfer-encoding", "date", "server", "strict-transport-security", "x-content-type-options"}

_POOL = {
    "id": "fid-pool",
    "vmSize": "standard_d2s_v3",
    "virtualMachineConfiguration": {
        "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "latest"},
        "nodeAgentSKUId": "batch.node.ubuntu 22.04",
    },
    "targetDedicatedNodes": 1,
}


def recorded(name: str, method: str, path_part: str, status: int | None = None) -> dict[str, Any]:
    """The first entry of a recording whose method matches and whose URI contains ``path_part``."""
    entries = json.loads((RECORDINGS / name).read_text())["Entries"]
    for entry in entries:
        uri = entry["RequestUri"]
        if entry["RequestMethod"] == method and path_part in uri and (status is None or entry["StatusCode"] == status):
            if status is None and isinstance(entry["ResponseBody"], dict) and "state" in entry["ResponseBody"]:
                if entry["ResponseBody"]["state"] not in ("completed", "idle", "active"):
                    continue
            return entry
    raise LookupError(f"{name}: no {method} {path_part}")


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def shape_diff(rec: Any, ours: Any, path: str = "") -> list[str]:
    """Fields of ``rec`` missing from ``ours`` or of another JSON type, recursively."""
    problems: list[str] = []
    if isinstance(rec, dict):
        if not isinstance(ours, dict):
            return [f"{path or '/'}: expected object, got {json_type(ours)}"]
        for key, value in rec.items():
            if key in IGNORED:
                continue
            if key not in ours:
                problems.append(f"{path}/{key}: missing")
                continue
            problems += shape_diff(value, ours[key], f"{path}/{key}")
    elif isinstance(rec, list):
        if not isinstance(ours, list):
            return [f"{path}: expected array, got {json_type(ours)}"]
        if rec and ours:
            # Compare with the emulator's item closest in shape (lists mix e.g. auto-pool and pool jobs).
            problems += min((shape_diff(rec[0], item, f"{path}[0]") for item in ours), key=len)
    elif rec is not None and ours is not None and json_type(rec) != json_type(ours):
        problems.append(f"{path}: {json_type(rec)} recorded, {json_type(ours)} from the emulator")
    return problems


def send(client: Any, method: str, url: str, body: Any = None) -> Any:
    sep = "&" if "?" in url else "?"
    headers = {"Content-Type": "application/json; odata=minimalmetadata"} if body is not None else {}
    request = HttpRequest(method, f"{url}{sep}{API}", headers=headers, json=body)
    try:
        response = client.send_request(request)
    except HttpResponseError as err:
        response = err.response
    response.read()
    return response


def check(entry: dict[str, Any], response: Any, *, body: bool = True) -> None:
    assert response.status_code == entry["StatusCode"], response.text()
    ours = {k.lower() for k in response.headers}
    wanted = {k.lower() for k in entry["ResponseHeaders"]} - TRANSPORT_HEADERS
    if response.status_code >= 400 or entry["RequestMethod"] == "HEAD":
        wanted.discard("content-length")
    assert wanted <= ours, f"missing headers {wanted - ours}"
    rec_body = entry["ResponseBody"]
    if body and isinstance(rec_body, dict):
        problems = shape_diff(rec_body, response.json())
        assert not problems, problems


@pytest.fixture(scope="module")
def world(emulator: Any) -> dict[str, Any]:
    """Resources shaped like the recordings': a steady pool, a job and a completed task."""
    client = emulator.client()
    send(client, "POST", "/pools", _POOL)
    send(client, "POST", "/jobs", {"id": "fid-job", "poolInfo": {"poolId": "fid-pool"}})
    send(client, "POST", "/jobs/fid-job/tasks", {"id": "fid-task", "commandLine": "echo hello world"})
    wait_for(lambda: send(client, "GET", "/jobs/fid-job/tasks/fid-task").json()["state"] == "completed")
    node_id = send(client, "GET", "/pools/fid-pool/nodes").json()["value"][0]["id"]
    wait_for(lambda: send(client, "GET", f"/pools/fid-pool/nodes/{node_id}").json()["state"] == "idle")
    return {"client": client, "node": node_id}


def test_error_bodies(world: dict[str, Any]) -> None:
    client = world["client"]
    entry = recorded("errors-exception_policy.json", "GET", "/pools/non-existent-pool-id")
    response = send(client, "GET", "/pools/non-existent-pool-id")
    check(entry, response)
    assert response.json()["code"] == "PoolNotFound"
    value = response.json()["message"]["value"]
    assert "\nRequestId:" in value and "\nTime:" in value
    assert response.json()["odata.metadata"].endswith(
        "/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"
    )
    entry = recorded("errors-exception_policy.json", "POST", "/jobs", 409)
    check(entry, send(client, "POST", "/jobs", {"id": "fid-job", "poolInfo": {"poolId": "fid-pool"}}))
    entry = recorded("create_pools.json", "POST", "/pools", 400)
    response = send(client, "POST", "/pools", {**_POOL, "id": "fid-bad", "vmSize": "standard_nope"})
    check(entry, response)
    assert [v["key"] for v in response.json()["values"]] == ["PropertyName", "PropertyValue", "Reason"]


def test_pool_operations(world: dict[str, Any]) -> None:
    client = world["client"]
    check(
        recorded("create_pools.json", "POST", "/pools", 201), send(client, "POST", "/pools", {**_POOL, "id": "fid-p2"})
    )
    check(recorded("create_pools.json", "GET", "/pools/batch_disk_"), send(client, "GET", "/pools/fid-pool"))
    steady = recorded("scale_pools.json", "GET", "/pools/f50021c2?")
    check(steady, send(client, "GET", "/pools/fid-pool"))
    check(recorded("create_pools.json", "GET", "/nodecounts"), send(client, "GET", "/nodecounts"))
    check(recorded("create_pools.json", "GET", "/supportedimages"), send(client, "GET", "/supportedimages"))
    listing = recorded("create_pools.json", "GET", "/pools?api-version=2023-05-01.17.0&maxresults=1")
    response = send(client, "GET", "/pools?maxresults=1")
    check(listing, response)
    assert "$skiptoken=" in response.json()["odata.nextLink"]
    # Like the service, the emulator resizes only steady pools (409 PoolNotSteady otherwise).
    wait_for(lambda: send(client, "GET", "/pools/fid-p2").json()["allocationState"] == "steady")
    check(
        recorded("scale_pools.json", "POST", "/resize"),
        send(client, "POST", "/pools/fid-p2/resize", {"targetDedicatedNodes": 0}),
    )


def test_node_operations(world: dict[str, Any]) -> None:
    client, node = world["client"], world["node"]
    check(
        recorded("compute_nodes.json", "GET", "/nodes/tvmps_4f03"), send(client, "GET", f"/pools/fid-pool/nodes/{node}")
    )
    entry = recorded("tasks-files_sync_2025-06-01.json", "GET", "/pools/filepool/nodes?")
    check(entry, send(client, "GET", "/pools/fid-pool/nodes"))


def test_job_operations(world: dict[str, Any]) -> None:
    client = world["client"]
    pool = {"vmSize": "standard_d2s_v3", "virtualMachineConfiguration": _POOL["virtualMachineConfiguration"]}
    body = {"id": "fid-j2", "poolInfo": {"autoPoolSpecification": {"poolLifetimeOption": "job", "pool": pool}}}
    check(recorded("jobs.json", "POST", "/jobs?", 201), send(client, "POST", "/jobs", body))
    check(recorded("jobs.json", "GET", "/jobs/batch_job2_bb11edc"), send(client, "GET", "/jobs/fid-j2"))
    check(recorded("jobs.json", "GET", "/jobs?"), send(client, "GET", "/jobs"))
    check(recorded("jobs.json", "PATCH", "/jobs/"), send(client, "PATCH", "/jobs/fid-j2", {"priority": 900}))
    # The recording lists the statuses of batch_job1, a job with preparation and release tasks; for a job
    # without them the service answers 409 JobPreparationTaskNotSpecified.
    prep = {"id": "fid-j1", "poolInfo": {"poolId": "fid-pool"}, "jobPreparationTask": {"commandLine": "true"}}
    assert send(client, "POST", "/jobs", prep | {"jobReleaseTask": {"commandLine": "true"}}).status_code == 201
    check(recorded("jobs.json", "GET", "/jobpreparationandreleasetaskstatus"),
          send(client, "GET", "/jobs/fid-j1/jobpreparationandreleasetaskstatus"))  # fmt: skip
    check(recorded("jobs.json", "POST", "/terminate"), send(client, "POST", "/jobs/fid-j2/terminate"))
    check(recorded("jobs.json", "DELETE", "/jobs/"), send(client, "DELETE", "/jobs/fid-j2"))


def test_task_and_file_operations(world: dict[str, Any]) -> None:
    client = world["client"]
    rec = "tasks-files_sync_2025-06-01.json"
    check(
        recorded(rec, "POST", "/jobs/batch/tasks?"),
        send(client, "POST", "/jobs/fid-job/tasks", {"id": "fid-t2", "commandLine": "true"}),
    )
    check(recorded(rec, "GET", "/jobs/batch/tasks/test_task?"), send(client, "GET", "/jobs/fid-job/tasks/fid-task"))
    check(
        recorded(rec, "GET", "/jobs/batch/tasks/test_task/files?"),
        send(client, "GET", "/jobs/fid-job/tasks/fid-task/files"),
    )
    head = send(client, "HEAD", "/jobs/fid-job/tasks/fid-task/files/stdout.txt")
    check(recorded(rec, "HEAD", "/jobs/batch/tasks/test_task/files/stderr.txt"), head)
    assert head.headers["Content-Length"] == str(len("hello world\n"))
    got = send(client, "GET", "/jobs/fid-job/tasks/fid-task/files/stdout.txt")
    check(recorded(rec, "GET", "/jobs/batch/tasks/test_task/files/stderr.txt"), got, body=False)
    assert got.text() == "hello world\n"
    check(recorded(rec, "DELETE", "/jobs/batch/tasks/test_task/files/stderr.txt"),
          send(client, "DELETE", "/jobs/fid-job/tasks/fid-task/files/stderr.txt"))  # fmt: skip
