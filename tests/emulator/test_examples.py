"""Replay every request example Microsoft publishes for api-version 2025-06-01 against the emulator.

Each example (../shared/reference/batch-rest-2025-06-01/examples) is one operation's request and the
service's response. Before replaying it, the test creates what the example assumes exists (its pool,
node, job, task, file, schedule, user or certificate) under the example's own ids, and makes sure what
it creates does not exist yet. It then compares the status and the response's fields: every field of the
example's response must be in the emulator's, with a value of the same JSON type (and the same value
for ids and states), except fields that describe one instance (timestamps, etags, statistics...).

Where the emulator answers differently on purpose, DIVERGENCES says why and what it answers instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from batchmagic.emulator import schema
from tests.support.emulator import emulator_fixture, wait_for
from tests.support.reference import require_reference

REFERENCE = require_reference("batch-rest-2025-06-01")
EXAMPLES = sorted((REFERENCE / "examples").glob("*.json"))

emulator = emulator_fixture(scope="module", allocation_delay=0.2)

VMC = {
    "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204"},
    "nodeAgentSKUId": "batch.node.ubuntu 22.04",
}
#: Fields whose values describe one instance, not the service's behaviour.
INSTANCE = {
    "eTag", "lastModified", "creationTime", "stateTransitionTime", "previousStateTransitionTime",
    "allocationStateTransitionTime", "stats", "resourceTags", "odata.nextLink", "startTime", "endTime",
    "lastBootTime", "allocationTime", "ipAddress", "affinityId", "url", "nodeUrl", "nextRunTime", "previousState",
}  # fmt: skip
#: Examples where the emulator answers otherwise on purpose: example -> (status, error code, why).
DIVERGENCES = {
    "Pools_CreatePool_ResourceTags": (
        400, "InvalidPropertyValue",
        "the 2017 example's image (Ubuntu 18.04) is past its Batch support end of life in the supported-images list",
    ),
    "Pools_CreatePool_VirtualMachineConfiguration": (
        400, "InvalidPropertyValue", "the example's VM size standard_a1 (A series v1) is retired",
    ),
}  # fmt: skip
#: Fields of an example's response that depend on how its resource was configured, which the example
#: does not show (its pool had a start task, its job a preparation task, its account applications...).
CONFIGURED = {
    "Applications_ListApplications": {"value"},
    "Jobs_ListJobPreparationAndReleaseTaskStatus": {"jobReleaseTaskExecutionInfo"},  # its job had ended
    "Nodes_ListNodeExtensions": {"value"},
    "Pools_GetPool_Basic": {"startTask"},
    "Pools_ListPools_Basic": {"startTask"},
    "Nodes_GetNode": {"startTask", "startTaskInfo"},
    "Tasks_GetTask": {"multiInstanceSettings"},
    "Nodes_ListNodes": {"startTask", "startTaskInfo"},
    "Pools_GetPool_SecurityProfile": {"virtualMachineConfiguration", "startTask", "networkConfiguration"},
}


def _parameters(op_id: str) -> tuple[str, str, str | None, list[str]]:
    spec = json.loads((REFERENCE / "BatchService.json").read_text())
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters" or op["operationId"] != op_id:
                continue
            body = next((p["name"] for p in op["parameters"] if p.get("in") == "body"), None)
            query = [p["name"] for p in op["parameters"] if p.get("in") == "query"]
            return method.upper(), path, body, query
    raise KeyError(op_id)


class Account:
    """Creates what an example assumes exists, through the emulator's REST API."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.nodes: dict[str, str] = {}

    def send(self, method: str, path: str, body: Any = None) -> Any:
        sep = "&" if "?" in path else "?"
        try:
            return self.client.send_request(HttpRequest(method, f"{path}{sep}api-version=2025-06-01", json=body))
        except HttpResponseError as err:
            return err.response

    def pool(self, pool_id: str, nodes: int = 2) -> None:
        if self.send("GET", f"/pools/{pool_id}").status_code == 404:
            body = {"id": pool_id, "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": VMC}
            assert self.send("POST", "/pools", body | {"targetDedicatedNodes": nodes}).status_code == 201
        wait_for(lambda: self.send("GET", f"/pools/{pool_id}").json()["allocationState"] == "steady")
        wait_for(lambda: all(n["state"] == "idle" for n in self.send("GET", f"/pools/{pool_id}/nodes").json()["value"]))

    def node(self, pool_id: str, example_node: str) -> str:
        self.pool(pool_id)
        if example_node not in self.nodes:
            ids = [n["id"] for n in self.send("GET", f"/pools/{pool_id}/nodes").json()["value"]]
            taken = set(self.nodes.values())
            self.nodes[example_node] = next(i for i in ids if i not in taken) if len(taken) < len(ids) else ids[0]
        return self.nodes[example_node]

    def job(self, job_id: str) -> None:
        self.pool("poolId")
        if self.send("GET", f"/jobs/{job_id}").status_code == 404:
            assert self.send("POST", "/jobs", {"id": job_id, "poolInfo": {"poolId": "poolId"}}).status_code == 201

    def task(self, job_id: str, task_id: str, command: str = "/bin/sh -c 'echo hello > testFile.txt'") -> None:
        self.job(job_id)
        path = f"/jobs/{job_id}/tasks/{task_id}"
        found = self.send("GET", path)
        if found.status_code == 200 and found.json()["commandLine"] != command:
            self.absent(path)
        if self.send("GET", path).status_code == 404:
            assert (
                self.send("POST", f"/jobs/{job_id}/tasks", {"id": task_id, "commandLine": command}).status_code == 201
            )
        if "sleep" not in command:
            wait_for(lambda: self.send("GET", path).json()["state"] == "completed")

    def absent(self, path: str) -> None:
        if self.send("GET", path).status_code == 200:
            self.send("DELETE", path)
            wait_for(lambda: self.send("GET", path).status_code == 404)


def _prepare(account: Account, op_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Create the example's prerequisites; returns its parameters with node ids made real."""
    params = dict(params)
    if "nodeId" in params:
        params["nodeId"] = account.node(params["poolId"], params["nodeId"])
    elif "poolId" in params:
        account.pool(params["poolId"])
    if op_id == "Pools_RemoveNodes":
        print(
            account.send("GET", f"/pools/{params['poolId']}").json(),
            account.send("GET", f"/pools/{params['poolId']}/nodes").json(),
        )
        real = [account.node(params["poolId"], n) for n in params["removeOptions"]["nodeList"]]
        params["removeOptions"] = params["removeOptions"] | {"nodeList": real}
    if op_id.startswith("Pools_CreatePool"):
        account.absent(f"/pools/{params['pool']['id']}")
    if op_id == "Pools_GetPool_SecurityProfile" or op_id == "Pools_GetPool_Basic":
        account.pool(params["poolId"], nodes=0)
    if op_id == "Tasks_ReplaceTask":  # a task that has not completed yet
        account.task(params["jobId"], params["taskId"], "sleep 60")
    elif "taskId" in params:
        account.task(params["jobId"], params["taskId"])
    elif "jobId" in params:
        account.job(params["jobId"])
    if op_id.startswith("Tasks_CreateTask"):
        account.absent(f"/jobs/{params['jobId']}/tasks/{params['task']['id']}")
    if op_id == "Nodes_ReplaceNodeUser":
        body = {"name": params["userName"], "password": "initial-password"}
        account.send("POST", f"/pools/{params['poolId']}/nodes/{params['nodeId']}/users", body)
    if op_id.startswith("JobSchedules_Create"):
        account.pool("poolId")
        account.absent(f"/jobschedules/{params['jobSchedule']['id']}")
    elif (
        "jobScheduleId" in params and account.send("GET", f"/jobschedules/{params['jobScheduleId']}").status_code == 404
    ):
        spec = {"id": params["jobScheduleId"], "schedule": {"recurrenceInterval": "PT5M"}}
        account.send("POST", "/jobschedules", spec | {"jobSpecification": {"poolInfo": {"poolId": "poolId"}}})
    if op_id == "Jobs_ListJobPreparationAndReleaseTaskStatus":  # the example's job has a preparation task
        account.absent(f"/jobs/{params['jobId']}")
        prep = {"id": "myjobpreptask", "commandLine": "true"}
        job = {"id": params["jobId"], "poolInfo": {"poolId": "poolId"}, "jobPreparationTask": prep}
        assert account.send("POST", "/jobs", job).status_code == 201
        account.task(params["jobId"], "after-preparation")  # so that a node has run the preparation task
    if op_id == "JobSchedules_ListJobSchedules":  # the example's schedule has created its first job
        wait_for(
            lambda: all("recentJob" in j["executionInfo"] for j in account.send("GET", "/jobschedules").json()["value"])
        )
    if op_id == "Certificates_DeleteCertificate":
        cert = {"thumbprintAlgorithm": params["thumbprintAlgorithm"], "thumbprint": params["thumbprint"]}
        account.send("POST", "/certificates", cert | {"data": "U3dhZ2dlciByb2Nrcw==", "certificateFormat": "cer"})
    if op_id == "Certificates_CreateCertificate":
        cert = params["certificate"]
        account.absent(
            f"/certificates(thumbprintAlgorithm={cert['thumbprintAlgorithm']},thumbprint={cert['thumbprint']})"
        )
    return params


def _compare(expected: Any, actual: Any, path: str, skip: set[str], problems: list[str]) -> None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            problems.append(f"{path}: expected an object, got {actual!r}")
            return
        for key, value in expected.items():
            if key in INSTANCE or key in skip:
                continue
            if key not in actual:
                problems.append(f"{path}.{key} missing")
                continue
            _compare(value, actual[key], f"{path}.{key}", skip, problems)
    elif isinstance(expected, list):
        if not isinstance(actual, list):
            problems.append(f"{path}: expected a list, got {actual!r}")
        elif expected and actual:
            _compare(expected[0], actual[0], f"{path}[0]", skip, problems)
        elif expected and not actual:
            problems.append(f"{path}: expected items, got none")
    elif isinstance(expected, bool) or isinstance(actual, bool):
        if type(expected) is not type(actual):
            problems.append(f"{path}: expected {expected!r}, got {actual!r}")
    elif isinstance(expected, (int, float)):
        if not isinstance(actual, (int, float)):
            problems.append(f"{path}: expected a number, got {actual!r}")
    elif isinstance(expected, str) and not isinstance(actual, str):
        problems.append(f"{path}: expected a string, got {actual!r}")


def test_examples_are_all_here() -> None:
    assert len(EXAMPLES) == 33
    ops = {op.operation_id for op in schema.operations()}
    assert all(json.loads(p.read_text())["operationId"] in ops for p in EXAMPLES)


@pytest.fixture(scope="module")
def account(emulator: Any) -> Account:
    return Account(emulator.client())


#: Examples that change what later ones rely on run last.
_LAST = (
    "Tasks_DeleteTaskFile",
    "Jobs_TerminateJob",
    "JobSchedules_TerminateJobSchedule",
    "Pools_RemoveNodes",
    "Pools_EnablePoolAutoscale",
)


def _order(example: Path) -> tuple[int, str]:
    return (_LAST.index(example.stem) if example.stem in _LAST else -1, example.stem)


@pytest.mark.parametrize("example", sorted(EXAMPLES, key=_order), ids=lambda p: p.stem)
def test_example(account: Account, example: Path) -> None:
    data = json.loads(example.read_text())
    op_id = data["operationId"]
    method, template, body_name, query_names = _parameters(op_id)
    params = _prepare(account, op_id, data["parameters"])
    path = template
    for name, value in params.items():
        if "{" + name + "}" in path:
            path = path.replace("{" + name + "}", quote(str(value), safe=""))
    query = [f"{n}={quote(str(params[n]).lower() if isinstance(params[n], bool) else str(params[n]))}"
             for n in query_names if n in params and n != "api-version"]  # fmt: skip
    if query:
        path += "?" + "&".join(query)
    response = account.send(method, path, params.get(body_name) if body_name else None)
    if op_id == "Tasks_ReplaceTask":
        account.send("POST", f"{path}/terminate")
    expected_status = min(int(s) for s in data["responses"])
    if example.stem in DIVERGENCES:
        status, code, _why = DIVERGENCES[example.stem]
        assert (response.status_code, response.json()["code"]) == (status, code)
        return
    assert response.status_code == expected_status, response.text()
    expected = data["responses"][str(expected_status)].get("body")
    if expected is None or method == "HEAD":
        return
    if isinstance(expected, str):  # a file's content
        assert response.content
        return
    actual = response.json()
    problems: list[str] = []
    _compare(expected, actual, "", CONFIGURED.get(example.stem, set()), problems)
    assert not problems, problems
    # Ids and states the example shows are what the emulator shows for the same request.
    for key in ("id", "state", "allocationState", "poolId"):
        if key in expected and key in actual and expected.get("id") in params.values():
            assert actual[key] == expected[key], key


def test_the_emulators_copy_of_the_description_is_the_reference() -> None:
    """``spec_data.py`` is ``schema.compact`` of the reference BatchService.json, nothing edited by hand."""
    from batchmagic.emulator.spec_data import SPEC

    reference = schema.compact(json.loads((REFERENCE / "BatchService.json").read_text()))
    assert reference == SPEC
    assert schema.render(reference) == Path(schema.__file__).with_name("spec_data.py").read_text()
