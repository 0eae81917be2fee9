"""What the emulator puts on the wire, checked against the azure-batch 15.1 models (issue 20).

The live service, and the SDK 15.1 models generated from its TypeSpec, are the truth; the OpenAPI
description is a guide. Three checks, so that the next difference is found by a test:

- every enum the SDK defines has the SDK's spelling in the emulator's schema (where the description
  spells it otherwise, :data:`batchmagic.emulator.schema.WIRE_ENUMS` says what the service sends);
- a pool, job, task, schedule, node... made with every enum-bearing field set is answered so that the
  SDK's models deserialise it field by field into what the emulator stored (sdkwalk.compare), every
  enum value coming back as the SDK's enum type;
- every value of every SDK enum a request can carry goes in and comes back as that enum.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential

from batchmagic.emulator import Emulator
from batchmagic.emulator.schema import WIRE_ENUMS, models
from tests.support import sdkwalk
from tests.support.emulator import TEST_KEY, wait_for

IMAGE = {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404"}
AGENT = "batch.node.ubuntu 24.04"
VMC = {"imageReference": IMAGE, "nodeAgentSKUId": AGENT}

#: Description enums the SDK 15.1 has no enum for: certificates (retired for pools, the SDK dropped
#: them), the node communication mode (not in the SDK's models) and the per-operation node options
#: (the SDK has one BatchNodeDeallocationOption with the same values).
NOT_IN_SDK = {
    "BatchNodeDeallocateOption",
    "BatchNodeRebootKind",
    "BatchNodeReimageOption",
    "BatchAccessScope",
    "BatchCertificateFormat",
    "BatchCertificateState",
    "BatchCertificateStoreLocation",
    "BatchCertificateVisibility",
    "BatchNodeCommunicationMode",
}


def _sdk_enums() -> dict[str, type[enum.Enum]]:
    return {n: c for n, c in vars(m).items() if isinstance(c, type) and issubclass(c, enum.Enum)}


def test_every_sdk_enum_is_spelt_on_the_wire_as_the_sdk_spells_it() -> None:
    """azure-batch 15.1's enums (azure/batch/models/_enums.py) are the service's wire values: the emulator's
    schema stores and returns exactly those (recorded: ``creationtime``, ``confidentialvm``; REST reference:
    host endpoint mode ``Audit``/``Enforce``)."""
    spec = {name: model["enum"] for name, model in models().items() if "enum" in model}
    sdk = _sdk_enums()
    assert set(spec) - set(sdk) == NOT_IN_SDK
    for name, kind in sdk.items():
        assert name in spec, f"the description has no enum {name}"
        assert sorted(spec[name]) == sorted(v.value for v in kind), name
    assert set(WIRE_ENUMS) <= set(sdk)


# ----------------------------------------------------------------- a rich account
SUBNET = "/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/batch"
IDENTITY = "/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1"

RICH_POOL: dict[str, Any] = {
    "id": "rich",
    "displayName": "every enum",
    "vmSize": "Standard_D2s_v3",
    "targetDedicatedNodes": 1,
    "taskSlotsPerNode": 2,
    "enableInterNodeCommunication": False,
    "taskSchedulingPolicy": {"nodeFillType": "pack", "jobDefaultOrder": "creationtime"},
    "metadata": [{"name": "team", "value": "wire"}],
    "resourceTags": {"cost": "wire"},
    "virtualMachineConfiguration": {
        "imageReference": IMAGE,
        "nodeAgentSKUId": AGENT,
        "windowsConfiguration": {"enableAutomaticUpdates": False},
        "osDisk": {
            "ephemeralOSDiskSettings": {"placement": "cachedisk"},
            "caching": "readwrite",
            "diskSizeGB": 64,
            "writeAcceleratorEnabled": False,
            "managedDisk": {
                "storageAccountType": "premium_lrs",
                "diskEncryptionSet": {"id": "/subscriptions/{sub}/diskEncryptionSets/des"},
                "securityProfile": {"securityEncryptionType": "VMGuestStateOnly"},
            },
        },
        "dataDisks": [{"lun": 0, "diskSizeGB": 10, "caching": "readonly", "storageAccountType": "standard_lrs"}],
        "securityProfile": {
            "securityType": "confidentialvm",
            "encryptionAtHost": True,
            "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
            "proxyAgentSettings": {"enabled": True, "imds": {"mode": "Audit"}, "wireServer": {"mode": "Enforce"}},
        },
        "diskEncryptionConfiguration": {
            "targets": ["osdisk", "temporarydisk"],
            "customerManagedKey": {
                "identityReference": {"resourceId": IDENTITY},
                "keyUrl": "https://vault.vault.azure.net/keys/k/1",
                "rotationToLatestKeyVersionEnabled": True,
            },
        },
        "nodePlacementConfiguration": {"policy": "zonal"},
        "serviceArtifactReference": {"id": "/subscriptions/{sub}/serviceArtifacts/a/vmArtifactsProfiles/p"},
        "containerConfiguration": {
            "type": "dockerCompatible",
            "containerImageNames": [],
            "containerRegistries": [
                {"registryServer": "registry.example", "username": "u", "password": "p"},
                {"registryServer": "acr.example", "identityReference": {"resourceId": IDENTITY}},
            ],
        },
        "extensions": [
            {
                "name": "mon",
                "publisher": "Microsoft.Azure.Monitor",
                "type": "AzureMonitorLinuxAgent",
                "typeHandlerVersion": "1.0",
                "autoUpgradeMinorVersion": True,
                "enableAutomaticUpgrade": True,
                "settings": {"a": "b"},
                "protectedSettings": {"secret": "s"},
                "provisionAfterExtensions": [],
            }
        ],
    },
    "upgradePolicy": {
        "mode": "rolling",
        "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True, "disableAutomaticRollback": False},
        "rollingUpgradePolicy": {"maxBatchInstancePercent": 20, "pauseTimeBetweenBatches": "PT5M"},
    },
    "userAccounts": [
        {
            "name": "admin1",
            "password": "Pa55word!",
            "elevationLevel": "admin",
            "linuxUserConfiguration": {"uid": 1001, "gid": 1001},
        },
        {"name": "win", "password": "Pa55word!", "windowsUserConfiguration": {"loginMode": "batch"}},
    ],
    "startTask": {
        "commandLine": "true",
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}},
        # The process executor ignores container settings (they are stored and answered).
        "containerSettings": {
            "imageName": "busybox",
            "containerRunOptions": "--rm",
            "workingDirectory": "taskWorkingDirectory",
            "containerHostBatchBindMounts": [{"source": "Shared", "isReadOnly": True}],
        },
        "environmentSettings": [{"name": "A", "value": "1"}],
        "waitForSuccess": True,
        "maxTaskRetryCount": 1,
    },
    "networkConfiguration": {
        "subnetId": SUBNET,
        "dynamicVNetAssignmentScope": "none",
        "enableAcceleratedNetworking": True,
        "endpointConfiguration": {
            "inboundNATPools": [
                {
                    "name": "ssh",
                    "protocol": "tcp",
                    "backendPort": 22,
                    "frontendPortRangeStart": 15000,
                    "frontendPortRangeEnd": 15099,
                    "networkSecurityGroupRules": [{"priority": 150, "access": "allow", "sourceAddressPrefix": "*"}],
                },
                {
                    "name": "udp",
                    "protocol": "udp",
                    "backendPort": 5000,
                    "frontendPortRangeStart": 16000,
                    "frontendPortRangeEnd": 16099,
                },
            ]
        },
        "publicIPAddressConfiguration": {
            "provision": "batchmanaged",
            "ipFamilies": ["IPv4", "IPv6"],
            "ipTags": [{"ipTagType": "FirstPartyUsage", "tag": "wire"}],
        },
    },
    "mountConfiguration": [
        {
            "azureBlobFileSystemConfiguration": {
                "accountName": "acct",
                "containerName": "c",
                "accountKey": "c2VjcmV0",
                "relativeMountPath": "data",
                "identityReference": {"resourceId": IDENTITY},
            }
        },
        {"nfsMountConfiguration": {"source": "10.0.0.9:/share", "relativeMountPath": "nfs", "mountOptions": "-o ro"}},
        {
            "cifsMountConfiguration": {
                "username": "u",
                "password": "p",
                "source": "//server/share",
                "relativeMountPath": "cifs",
            }
        },
        {
            "azureFileShareConfiguration": {
                "accountName": "acct",
                "accountKey": "c2VjcmV0",
                "azureFileUrl": "https://acct.file.core.windows.net/share",
                "relativeMountPath": "files",
            }
        },
    ],
}

RICH_JOB: dict[str, Any] = {
    "id": "richjob",
    "displayName": "every field",
    "priority": 10,
    "maxParallelTasks": 4,
    "allowTaskPreemption": False,
    "poolInfo": {"poolId": "rich"},
    "onAllTasksComplete": "noaction",
    "onTaskFailure": "performexitoptionsjobaction",
    "usesTaskDependencies": True,
    "metadata": [{"name": "a", "value": "b"}],
    "constraints": {"maxWallClockTime": "P1D", "maxTaskRetryCount": 1},
    "commonEnvironmentSettings": [{"name": "COMMON", "value": "1"}],
    "networkConfiguration": {"subnetId": SUBNET, "skipWithdrawFromVNet": True},
    "jobPreparationTask": {"commandLine": "true", "userIdentity": {"autoUser": {"scope": "task"}}},
    "jobReleaseTask": {"commandLine": "true"},
}

RICH_TASK: dict[str, Any] = {
    "id": "richtask",
    "displayName": "every field",
    "commandLine": "exit 3",
    "exitConditions": {
        "exitCodes": [{"code": 3, "exitOptions": {"jobAction": "none", "dependencyAction": "satisfy"}}],
        "exitCodeRanges": [{"start": 4, "end": 9, "exitOptions": {"jobAction": "none", "dependencyAction": "block"}}],
        "preProcessingError": {"jobAction": "none"},
        "fileUploadError": {"jobAction": "none"},
        "default": {"jobAction": "none"},
    },
    "outputFiles": [
        {
            "filePattern": "*.txt",
            "destination": {
                "container": {
                    "containerUrl": "http://127.0.0.1:9/out?sig=x",
                    "path": "logs",
                    "uploadHeaders": [{"name": "x-ms-blob-content-type", "value": "text/plain"}],
                }
            },
            "uploadOptions": {"uploadCondition": "taskfailure"},
        }
    ],
    "environmentSettings": [{"name": "E", "value": "2"}],
    "affinityInfo": {"affinityId": "TVM:none"},
    "containerSettings": {"imageName": "busybox", "workingDirectory": "containerImageDefault"},
    "userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "nonadmin"}},
    "constraints": {"maxTaskRetryCount": 0, "maxWallClockTime": "PT1H", "retentionTime": "P1D"},
    "requiredSlots": 1,
}

#: Tasks that stay active: one waits for a dependency that failed, one needs inter-node communication.
WAITING_TASKS: list[dict[str, Any]] = [
    {"id": "dep", "commandLine": "true", "dependsOn": {"taskIds": ["nope"], "taskIdRanges": [{"start": 1, "end": 3}]}},
    {
        "id": "mi",
        "commandLine": "true",
        "multiInstanceSettings": {
            "numberOfInstances": 2,
            "coordinationCommandLine": "true",
            "commonResourceFiles": [{"httpUrl": "http://127.0.0.1:9/f", "filePath": "f"}],
        },
        "resourceFiles": [
            {"storageContainerUrl": "http://127.0.0.1:9/c?sig=x", "blobPrefix": "in/", "fileMode": "0644"}
        ],
    },
]


def _with_subscription(value: Any, sub: str) -> Any:
    return json.loads(json.dumps(value).replace("{sub}", sub))


@pytest.fixture(scope="module")
def account(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Emulator, BatchClient]]:
    workdir: Path = tmp_path_factory.mktemp("wire")
    with Emulator(key=TEST_KEY, allocation_delay=0.1, workdir=workdir, core_quota=64) as emu:
        client = BatchClient(emu.url, AzureNamedKeyCredential("devbatch", TEST_KEY))
        sub = emu.state.subscription
        client.create_pool(m.BatchPoolCreateOptions(_with_subscription(RICH_POOL, sub)))
        client.create_job(m.BatchJobCreateOptions(_with_subscription(RICH_JOB, sub)))
        client.create_task("richjob", m.BatchTaskCreateOptions(RICH_TASK))
        for task in WAITING_TASKS:
            client.create_task("richjob", m.BatchTaskCreateOptions(task))
        wait_for(lambda: client.get_task("richjob", "richtask").state == m.BatchTaskState.COMPLETED, 30)
        client.create_job_schedule(
            m.BatchJobScheduleCreateOptions(
                {
                    "id": "richschedule",
                    "displayName": "hourly",
                    "metadata": [{"name": "a", "value": "b"}],
                    "schedule": {
                        "recurrenceInterval": "PT1H",
                        "startWindow": "PT10M",
                        "doNotRunAfter": "2099-01-01T00:00:00Z",
                    },
                    "jobSpecification": {
                        "poolInfo": {
                            "autoPoolSpecification": {
                                "autoPoolIdPrefix": "sched",
                                "poolLifetimeOption": "jobschedule",
                                "keepAlive": True,
                                "pool": {"vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": VMC},
                            }
                        },
                        "onAllTasksComplete": "terminatejob",
                        "jobManagerTask": {"id": "jm", "commandLine": "true", "killJobOnCompletion": True},
                    },
                }
            )
        )
        # A job whose release task has run (it ends with its one task), an autoscale pool, a pool over quota.
        job = {**RICH_JOB, "id": "released", "onAllTasksComplete": "terminatejob", "usesTaskDependencies": False}
        client.create_job(m.BatchJobCreateOptions(_with_subscription(job, sub)))
        client.create_task("released", m.BatchTaskCreateOptions({"id": "t", "commandLine": "true"}))
        auto = {"enableAutoScale": True, "autoScaleFormula": "$TargetDedicatedNodes = 0;"}
        client.create_pool(
            m.BatchPoolCreateOptions(
                {"id": "autoscaled", "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": VMC, **auto}
            )
        )
        big = {
            "id": "big",
            "vmSize": "Standard_D2s_v3",
            "virtualMachineConfiguration": VMC,
            "targetDedicatedNodes": 100,
        }
        client.create_pool(m.BatchPoolCreateOptions(big))
        wait_for(lambda: client.get_job("released").state == m.BatchJobState.COMPLETED, 30)
        wait_for(lambda: client.get_pool("big").resize_errors, 30)
        wait_for(lambda: client.get_pool("autoscaled").auto_scale_run, 30)
        failing = {"enableAutoScale": True, "autoScaleFormula": "$TargetDedicatedNodes = $PendingTasks.GetSample(1);"}
        client.create_pool(
            m.BatchPoolCreateOptions(
                {"id": "autoerror", "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": VMC, **failing}
            )
        )
        wait_for(lambda: (client.get_pool("autoerror").auto_scale_run or m.AutoScaleRun()).error, 30)
        yield emu, client


def _assert_same(stored: Any, answer: Any) -> None:
    problems = sdkwalk.compare(stored, answer)
    assert problems == [], "\n".join(problems)


def _steady(stored: Callable[[], Any], answer: Callable[[], Any]) -> tuple[Any, Any]:
    """What was stored and the service's answer, taken while it did not change (the same stored before and
    after the answer): a pool moves on its own (allocation, resize errors, autoscale runs), and an answer
    from before a change compared with the stored state after it differs though both were right."""

    def taken() -> tuple[Any, Any] | None:
        before = stored()
        got = answer()
        return (before, got) if stored() == before else None

    pair: tuple[Any, Any] = wait_for(taken, 30)
    return pair


def test_pool_answer_is_what_was_stored_in_the_sdks_types(account: tuple[Emulator, BatchClient]) -> None:
    emu, client = account
    _assert_same(*_steady(lambda: emu.state.get_pool("rich"), lambda: client.get_pool("rich")))
    stored, listed = _steady(emu.state.list_pools, lambda: list(client.list_pools()))
    by_id = {pool["id"]: pool for pool in stored}
    assert sorted(by_id) == sorted(answer.id for answer in listed)
    for answer in listed:
        _assert_same(by_id[answer.id], answer)


def test_node_answers_are_what_was_stored_in_the_sdks_types(account: tuple[Emulator, BatchClient]) -> None:
    from batchmagic.emulator.state.endpoints import node_extensions

    emu, client = account
    node = wait_for(lambda: [n for n in client.list_nodes("rich") if n.state == m.BatchNodeState.IDLE], 30)[0]
    _assert_same(emu.state.get_node("rich", node.id), client.get_node("rich", node.id))
    stored = node_extensions(emu.state.get_pool("rich"))
    answers = list(client.list_node_extensions("rich", node.id))
    assert len(answers) == len(stored) == 2
    for ext, answer in zip(stored, answers, strict=True):
        _assert_same(ext, answer)
    for counts in client.list_pool_node_counts():
        _assert_same(next(c for c in emu.state.node_counts() if c["poolId"] == counts.pool_id), counts)


def test_job_task_and_schedule_answers_are_what_was_stored(account: tuple[Emulator, BatchClient]) -> None:
    emu, client = account
    for job in client.list_jobs():
        _assert_same(emu.state.get_job(job.id), job)
        for task in client.list_tasks(job.id):
            _assert_same(emu.state.get_task(job.id, task.id), task)
        if job.job_preparation_task is None:
            continue  # the service answers 409 JobPreparationTaskNotSpecified
        for status in client.list_job_preparation_and_release_task_status(job.id):
            stored = next(s for s in emu.state.job_prep_release_status(job.id) if s["nodeId"] == status.node_id)
            _assert_same(stored, status)
    _assert_same(emu.state.get_job_schedule("richschedule"), client.get_job_schedule("richschedule"))
    assert client.get_task("richjob", "mi").multi_instance_settings.number_of_instances == 2
    released = list(client.list_job_preparation_and_release_task_status("released"))
    assert released and released[0].job_release_task_execution_info.state == m.BatchJobReleaseTaskState.COMPLETED


def test_supported_images_are_in_the_sdks_types(account: tuple[Emulator, BatchClient]) -> None:
    from batchmagic.emulator.images import SUPPORTED_IMAGES

    answers = list(account[1].list_supported_images())
    assert len(answers) == len(SUPPORTED_IMAGES)
    for stored, answer in zip(SUPPORTED_IMAGES, answers, strict=True):
        _assert_same(stored, answer)


#: Models the SDK can find in an answer that the emulator never produces, and why.
NOT_PRODUCED = {
    "BatchJobStatistics": "no usage statistics ($expand=stats) are kept",
    "BatchJobScheduleStatistics": "no usage statistics are kept",
    "BatchPoolStatistics": "no usage statistics are kept",
    "BatchPoolResourceStatistics": "no usage statistics are kept",
    "BatchPoolUsageStatistics": "no usage statistics are kept",
    "BatchTaskStatistics": "no usage statistics are kept",
    "BatchPoolIdentity": "a pool's managed identity is set through ARM (Microsoft.Batch), not this API",
    "BatchUserAssignedIdentity": "a pool's managed identity is set through ARM, not this API",
    "BatchApplicationPackageReference": "the account has no applications (a reference is refused)",
    "BatchTaskContainerExecutionInfo": "set by the docker executor only (tests/emulator/test_docker.py)",
    "BatchNodeError": "set by the docker executor only, when an image cannot be pulled",
    "BatchJobSchedulingError": "an auto pool is created with its job, so a job never fails to schedule",
    "BatchTaskInfo": "a node's recentTasks are not listed",
}


def test_every_model_an_answer_can_hold_was_compared(account: tuple[Emulator, BatchClient]) -> None:
    """Run last in this module: what the comparisons above walked through covers every SDK model an
    answer about pools, nodes, jobs, tasks, schedules, node counts, images, job preparation/release
    status and node extensions can hold, but for those the emulator never produces (NOT_PRODUCED)."""
    tops = [
        m.BatchPool,
        m.BatchNode,
        m.BatchJob,
        m.BatchTask,
        m.BatchJobSchedule,
        m.BatchPoolNodeCounts,
        m.BatchSupportedImage,
        m.BatchJobPreparationAndReleaseTaskStatus,
        m.BatchNodeVMExtension,
    ]
    missing = sdkwalk.reachable(tops) - sdkwalk.visited_models
    assert missing <= set(NOT_PRODUCED), sorted(missing - set(NOT_PRODUCED))


# ----------------------------------------------------------------- every enum value, in and out
def _enum_leaves(model: str, value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(path, enum name) of every enum-valued field of ``value``, an instance of description model ``model``."""
    props = models()[model].get("properties", {})
    for key, item in value.items():
        if key in props and item is not None:
            yield from _leaf(props[key], item, (*path, key))


def _leaf(spec: dict[str, Any], value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    if "ref" in spec:
        target = models()[spec["ref"]]
        if "enum" in target:
            yield path, spec["ref"]
        elif "properties" in target and isinstance(value, dict):
            yield from _enum_leaves(spec["ref"], value, path)
    elif spec.get("type") == "array" and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaf(spec.get("items") or {}, item, (*path, i))


def _variants(model: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``body`` once more for every other value of every enum it sets, each under a fresh id."""
    out = []
    for path, enum_name in _enum_leaves(model, body):
        kind = _sdk_enums()[enum_name]
        for value in kind:
            variant = json.loads(json.dumps(body))
            holder = variant
            for step in path[:-1]:
                holder = holder[step]
            if holder[path[-1]] == value.value:
                continue
            holder[path[-1]] = value.value
            variant["id"] = f"v{len(out)}"
            out.append((f"{'.'.join(map(str, path))}={value.value}", variant))
    return out


def test_every_sdk_enum_value_goes_in_and_comes_back_as_the_sdks_enum(account: tuple[Emulator, BatchClient]) -> None:
    """Every value of every SDK enum a pool, job or task carries: created through the SDK, answered so
    that the SDK hands back its enum member (sdkwalk.compare checks each enum field's type)."""
    emu, client = account
    sub = emu.state.subscription
    pool = {**_with_subscription(RICH_POOL, sub), "targetDedicatedNodes": 0}
    pool.pop("startTask")  # no node boots here; the start task's enums are in the rich pool
    seen = 0
    for name, variant in _variants("BatchPoolCreateOptions", pool):
        variant["id"] = f"pool-{variant['id']}"
        client.create_pool(m.BatchPoolCreateOptions(variant))
        problems = sdkwalk.compare(emu.state.get_pool(variant["id"]), client.get_pool(variant["id"]))
        assert problems == [], (name, problems)
        seen += 1
    client.create_pool(
        m.BatchPoolCreateOptions({"id": "empty", "vmSize": "Standard_D2s_v3", "virtualMachineConfiguration": VMC})
    )
    job = {**_with_subscription(RICH_JOB, sub), "poolInfo": {"poolId": "empty"}}
    for name, variant in _variants("BatchJobCreateOptions", job):
        variant["id"] = f"job-{variant['id']}"
        client.create_job(m.BatchJobCreateOptions(variant))
        assert sdkwalk.compare(emu.state.get_job(variant["id"]), client.get_job(variant["id"])) == [], name
        seen += 1
    client.create_job(
        m.BatchJobCreateOptions({"id": "variants", "poolInfo": {"poolId": "empty"}, "usesTaskDependencies": True})
    )
    for name, variant in _variants("BatchTaskCreateOptions", RICH_TASK):
        client.create_task("variants", m.BatchTaskCreateOptions(variant))
        answer = client.get_task("variants", variant["id"])
        assert sdkwalk.compare(emu.state.get_task("variants", variant["id"]), answer) == [], name
        seen += 1
    assert seen >= 40
