"""Clients nobody here wrote, against the emulator: the Azure CLI and the legacy azure-batch 14.

Each runs from its own virtual environment, which ``make test`` builds (``.venv-azcli``,
``.venv-batch14``). Without it the test skips while you work, and fails under CI (``CI`` set), so a
missing client is never a silent pass there.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.azurite import ACCOUNT, KEY, RunningAzurite
from tests.support.emulator import RunningEmulator, emulator_fixture, wait_for

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

emulator = emulator_fixture(scope="module", allocation_delay=0.3)


def _client_bin(venv: str, name: str) -> Path:
    path = ROOT / venv / "bin" / name
    if not path.exists():
        message = f"{path} is missing: `make {venv}/bin/.installed` (make test builds it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class AzCli:
    """``az batch ...`` against the emulator, with a throwaway configuration directory."""

    def __init__(self, az: Path, emulator: RunningEmulator, config_dir: Path) -> None:
        self.az = az
        self.account = [
            "--account-endpoint", emulator.endpoint, "--account-name", emulator.account,
            "--account-key", emulator.key,
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "AZURE_CONFIG_DIR": str(config_dir),
            "AZURE_CORE_COLLECT_TELEMETRY": "false",
            "AZURE_CORE_NO_COLOR": "true",
            "AZURE_CORE_ONLY_SHOW_ERRORS": "true",
        }

    def __call__(self, *args: str, ok: bool = True) -> Any:
        proc = subprocess.run(
            [str(self.az), "batch", *args, *self.account, "-o", "json"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        if ok:
            assert proc.returncode == 0, f"az batch {' '.join(args)}: {proc.stderr}"
            return json.loads(proc.stdout) if proc.stdout.strip() else None
        assert proc.returncode != 0, f"az batch {' '.join(args)} should have failed"
        return proc.stderr


def test_azure_cli_batch_commands(emulator: RunningEmulator, tmp_path: Path) -> None:
    az = AzCli(_client_bin(".venv-azcli", "az"), emulator, tmp_path / "azure")
    image = [
        "--image",
        "canonical:0001-com-ubuntu-server-jammy:22_04-lts",
        "--node-agent-sku-id",
        "batch.node.ubuntu 22.04",
    ]
    az("pool", "create", "--id", "clipool", "--vm-size", "Standard_D2s_v3", *image, "--target-dedicated-nodes", "1")
    assert [p["id"] for p in az("pool", "list")] == ["clipool"]
    wait_for(lambda: az("pool", "show", "--pool-id", "clipool")["allocationState"] == "steady", 20)
    az("pool", "resize", "--pool-id", "clipool", "--target-dedicated-nodes", "2")
    wait_for(lambda: az("pool", "show", "--pool-id", "clipool")["currentDedicatedNodes"] == 2, 20)

    az("job", "create", "--id", "clijob", "--pool-id", "clipool")
    assert [(j["id"], j["state"]) for j in az("job", "list")] == [("clijob", "active")]
    az("job", "disable", "--job-id", "clijob", "--disable-tasks", "requeue")
    assert az("job", "show", "--job-id", "clijob")["state"] == "disabled"
    az("job", "enable", "--job-id", "clijob")
    assert az("job", "show", "--job-id", "clijob")["state"] == "active"

    az(
        "task",
        "create",
        "--job-id",
        "clijob",
        "--task-id",
        "hello",
        "--command-line",
        "/bin/sh -c 'echo hello from az'",
    )
    az("task", "create", "--job-id", "clijob", "--task-id", "fails", "--command-line", "/bin/sh -c 'exit 2'")
    wait_for(lambda: {t["state"] for t in az("task", "list", "--job-id", "clijob")} == {"completed"}, 20)
    failed = az("task", "show", "--job-id", "clijob", "--task-id", "fails")
    assert failed["executionInfo"]["exitCode"] == 2 and failed["executionInfo"]["result"] == "failure"
    az("task", "reactivate", "--job-id", "clijob", "--task-id", "fails")
    again = wait_for(
        lambda: (t := az("task", "show", "--job-id", "clijob", "--task-id", "fails"))["state"] == "completed" and t, 20
    )  # noqa: E501
    assert again["executionInfo"]["exitCode"] == 2
    out = tmp_path / "stdout.txt"
    az(
        "task",
        "file",
        "download",
        "--job-id",
        "clijob",
        "--task-id",
        "hello",
        "--file-path",
        "stdout.txt",
        "--destination",
        str(out),
    )  # noqa: E501
    assert out.read_text() == "hello from az\n"

    nodes = az("node", "list", "--pool-id", "clipool")
    assert len(nodes) == 2 and {n["state"] for n in nodes} <= {"idle", "running"}
    az("node", "reboot", "--pool-id", "clipool", "--node-id", nodes[0]["id"])
    wait_for(lambda: az("node", "show", "--pool-id", "clipool", "--node-id", nodes[0]["id"])["state"] == "idle", 20)

    az(
        "pool",
        "autoscale",
        "enable",
        "--pool-id",
        "clipool",
        "--auto-scale-formula",
        "$TargetDedicatedNodes=1",
        "--auto-scale-evaluation-interval",
        "PT5M",
    )  # noqa: E501
    run = az(
        "pool", "autoscale", "evaluate", "--pool-id", "clipool", "--auto-scale-formula", "$TargetDedicatedNodes=3;$x=2"
    )  # noqa: E501
    assert run["results"] == "$TargetDedicatedNodes=3;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;$x=2"
    wait_for(lambda: az("pool", "show", "--pool-id", "clipool")["currentDedicatedNodes"] == 1, 20)
    assert "OperationNotValidOnPool" in az(
        "pool", "resize", "--pool-id", "clipool", "--target-dedicated-nodes", "0", ok=False
    )  # noqa: E501

    # A pool whose start task must succeed, and fails: its node is startTaskFailed.
    az("pool", "create", "--id", "clistart", "--vm-size", "Standard_D2s_v3", *image, "--target-dedicated-nodes", "1",
       "--start-task-command-line", "/bin/sh -c 'echo starting; exit 2'", "--start-task-wait-for-success")  # fmt: skip
    node = wait_for(
        lambda: (n := az("node", "list", "--pool-id", "clistart")) and n[0]["state"] == "starttaskfailed" and n[0], 20
    )  # noqa: E501
    assert node["startTaskInfo"]["exitCode"] == 2 and node["startTaskInfo"]["result"] == "failure"
    log = tmp_path / "start.txt"
    az(
        "node",
        "file",
        "download",
        "--pool-id",
        "clistart",
        "--node-id",
        node["id"],
        "--file-path",
        "startup/stdout.txt",
        "--destination",
        str(log),
    )  # noqa: E501
    assert log.read_text() == "starting\n"
    az("pool", "delete", "--pool-id", "clistart", "--yes")

    az("job", "stop", "--job-id", "clijob")
    wait_for(lambda: az("job", "show", "--job-id", "clijob")["state"] == "completed", 20)
    az("job", "delete", "--job-id", "clijob", "--yes")
    az("pool", "delete", "--pool-id", "clipool", "--yes")
    wait_for(lambda: az("pool", "list") == [] and az("job", "list") == [], 20)


def test_legacy_sdk_runs_the_published_quickstart(emulator: RunningEmulator, azurite: RunningAzurite) -> None:
    python = _client_bin(".venv-batch14", "python")
    env = {
        **os.environ,
        "BATCH_ACCOUNT_URL": emulator.endpoint,
        "BATCH_ACCOUNT_NAME": emulator.account,
        "BATCH_ACCOUNT_KEY": emulator.key,
        "STORAGE_CONNECTION_STRING": azurite.connection_string,
        "STORAGE_ACCOUNT_NAME": ACCOUNT,
        "STORAGE_ACCOUNT_KEY": KEY,
    }
    script = Path(__file__).parent / "clients" / "batch14_quickstart.py"
    proc = subprocess.run([str(python), str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for i in range(3):
        assert f"Task: Task{i}\n" in out and f"input file {i}\ntool-installed\n" in out
    assert out.count("Start task on ") == 2 and out.count(": completed exit 0") == 2
    assert "Deleted the job and the pool." in out
    # The legacy client speaks an older api-version, which the emulator accepts.
    versions = {tuple(r["query"].get("api-version", [""])) for r in emulator.requests()}
    assert ("2024-02-01.19.0",) in versions, versions


def test_azure_cli_runs_a_multi_instance_task(emulator: RunningEmulator, tmp_path: Path) -> None:
    """The Azure CLI's own JSON (the REST bodies, as Microsoft's multi-instance page writes them): a pool with
    inter-node communication, a task with multiInstanceSettings, its subtasks listed with their nodes."""
    az = AzCli(_client_bin(".venv-azcli", "az"), emulator, tmp_path / "azure")
    pool = {
        "id": "mipool",
        "vmSize": "Standard_D2s_v3",
        "virtualMachineConfiguration": {
            "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"},
            "nodeAgentSKUId": "batch.node.ubuntu 22.04",
        },
        "targetDedicatedNodes": 2,
        "enableInterNodeCommunication": True,
        "taskSlotsPerNode": 1,
    }
    (tmp_path / "pool.json").write_text(json.dumps(pool))
    az("pool", "create", "--json-file", str(tmp_path / "pool.json"))
    wait_for(lambda: {n["state"] for n in az("node", "list", "--pool-id", "mipool")} == {"idle"}, 30)
    az("job", "create", "--id", "mijob", "--pool-id", "mipool")
    task = {
        "id": "mpi",
        # The primary only, once every coordination command has ended.
        "commandLine": "/bin/sh -c 'echo master=$AZ_BATCH_MASTER_NODE hosts=$AZ_BATCH_HOST_LIST "
        "is_master=$AZ_BATCH_IS_CURRENT_NODE_MASTER; cat $AZ_BATCH_TASK_SHARED_DIR/coordinated'",
        "multiInstanceSettings": {
            "numberOfInstances": 2,
            "coordinationCommandLine": "/bin/sh -c 'echo $AZ_BATCH_NODE_ID > $AZ_BATCH_TASK_SHARED_DIR/coordinated'",
        },
    }
    (tmp_path / "task.json").write_text(json.dumps(task))
    az("task", "create", "--job-id", "mijob", "--json-file", str(tmp_path / "task.json"))
    done = wait_for(
        lambda: (t := az("task", "show", "--job-id", "mijob", "--task-id", "mpi"))["state"] == "completed" and t, 30
    )
    assert done["executionInfo"]["exitCode"] == 0 and done["multiInstanceSettings"]["numberOfInstances"] == 2
    out = tmp_path / "stdout.txt"
    az("task", "file", "download", "--job-id", "mijob", "--task-id", "mpi", "--file-path", "stdout.txt",
       "--destination", str(out))  # fmt: skip
    said = dict(word.split("=", 1) for word in out.read_text().splitlines()[0].split())
    hosts = said["hosts"].split(",")
    primary = done["nodeInfo"]["nodeId"]
    assert len(set(hosts)) == 2 and said["is_master"] == "true"
    assert said["master"].rsplit(":", 1)[0] in hosts  # an address of the list, with a port
    assert out.read_text().splitlines()[1] == primary  # its own coordination command ran first, on its node

    subtasks = az("task", "subtask", "list", "--job-id", "mijob", "--task-id", "mpi")
    assert [(s["id"], s["state"], s["exitCode"]) for s in subtasks] == [(1, "completed", 0)]
    nodes = {n["id"] for n in az("node", "list", "--pool-id", "mipool")}
    assert subtasks[0]["nodeInfo"]["nodeId"] in nodes - {primary}  # the other node, not the primary's

    az("job", "delete", "--job-id", "mijob", "--yes")
    az("pool", "delete", "--pool-id", "mipool", "--yes")
