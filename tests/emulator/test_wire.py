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
from collections.abc import Iterator
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
        "osDisk": {
            "ephemeralOSDiskSettings": {"placement": "cachedisk"},
            "caching": "readwrite",
            "managedDisk": {"storageAccountType": "premium_lrs"},
        },
        "dataDisks": [{"lun": 0, "diskSizeGB": 10, "caching": "readonly", "storageAccountType": "standard_lrs"}],
        "securityProfile": {
            "securityType": "confidentialvm",
            "encryptionAtHost": True,
            "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
            "proxyAgentSettings": {"enabled": True, "imds": {"mode": "Audit"}, "wireServer": {"mode": "Enforce"}},
        },
        "diskEncryptionConfiguration": {"targets": ["osdisk", "temporarydisk"]},
        "nodePlacementConfiguration": {"policy": "zonal"},
        "containerConfiguration": {"type": "dockerCompatible", "containerImageNames": []},
        "extensions": [
            {
                "name": "mon",
                "publisher": "Microsoft.Azure.Monitor",
                "type": "AzureMonitorLinuxAgent",
                "typeHandlerVersion": "1.0",
            }
        ],
    },
    "upgradePolicy": {"mode": "manual"},
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
        "containerSettings": {
            "imageName": "busybox",
            "workingDirectory": "taskWorkingDirectory",
            "containerHostBatchBindMounts": [{"source": "Shared", "isReadOnly": True}],
        },
        "waitForSuccess": True,
        "maxTaskRetryCount": 1,
    },
    "networkConfiguration": {
        "dynamicVNetAssignmentScope": "none",
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
        "publicIPAddressConfiguration": {"provision": "batchmanaged", "ipFamilies": ["IPv4", "IPv6"]},
    },
    "mountConfiguration": [
        {
            "azureBlobFileSystemConfiguration": {
                "accountName": "acct",
                "containerName": "c",
                "accountKey": "c2VjcmV0",
                "relativeMountPath": "data",
            }
        }
    ],
}

RICH_JOB: dict[str, Any] = {
    "id": "richjob",
    "priority": 10,
    "poolInfo": {"poolId": "rich"},
    "onAllTasksComplete": "noaction",
    "onTaskFailure": "performexitoptionsjobaction",
    "usesTaskDependencies": True,
    "metadata": [{"name": "a", "value": "b"}],
    "networkConfiguration": None,
    "jobPreparationTask": {"commandLine": "true", "userIdentity": {"autoUser": {"scope": "task"}}},
    "jobReleaseTask": {"commandLine": "true"},
}

RICH_TASK: dict[str, Any] = {
    "id": "richtask",
    "commandLine": "exit 3",
    "exitConditions": {
        "exitCodes": [{"code": 3, "exitOptions": {"jobAction": "none", "dependencyAction": "satisfy"}}],
        "exitCodeRanges": [{"start": 4, "end": 9, "exitOptions": {"jobAction": "none", "dependencyAction": "block"}}],
        "preProcessingError": {"jobAction": "none"},
        "fileUploadError": {"jobAction": "none"},
        "default": {"jobAction": "none"},
    },
    "outputFiles": [],
    "userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "nonadmin"}},
    "constraints": {"maxTaskRetryCount": 0},
}


@pytest.fixture(scope="module")
def account(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Emulator, BatchClient]]:
    workdir: Path = tmp_path_factory.mktemp("wire")
    with Emulator(key=TEST_KEY, allocation_delay=0.1, workdir=workdir) as emu:
        client = BatchClient(emu.url, AzureNamedKeyCredential("devbatch", TEST_KEY))
        pool = dict(RICH_POOL)
        # The start task's container needs a container-capable executor: run it on the host here.
        pool["startTask"] = {k: v for k, v in RICH_POOL["startTask"].items() if k != "containerSettings"}
        client.create_pool(m.BatchPoolCreateOptions(pool))
        client.create_job(m.BatchJobCreateOptions({k: v for k, v in RICH_JOB.items() if v is not None}))
        client.create_task("richjob", m.BatchTaskCreateOptions(RICH_TASK))
        wait_for(lambda: client.get_task("richjob", "richtask").state == m.BatchTaskState.COMPLETED, 30)
        client.create_job_schedule(
            m.BatchJobScheduleCreateOptions(
                {
                    "id": "richschedule",
                    "schedule": {"recurrenceInterval": "PT1H"},
                    "jobSpecification": {"poolInfo": {"poolId": "rich"}, "onAllTasksComplete": "terminatejob"},
                }
            )
        )
        yield emu, client


def _assert_same(stored: Any, answer: Any) -> None:
    problems = sdkwalk.compare(stored, answer)
    assert problems == [], "\n".join(problems)


def test_pool_answer_is_what_was_stored_in_the_sdks_types(account: tuple[Emulator, BatchClient]) -> None:
    emu, client = account
    _assert_same(emu.state.get_pool("rich"), client.get_pool("rich"))
    for listed in client.list_pools():
        _assert_same(emu.state.get_pool(listed.id), listed)


def test_node_answers_are_what_was_stored_in_the_sdks_types(account: tuple[Emulator, BatchClient]) -> None:
    emu, client = account
    node = wait_for(lambda: [n for n in client.list_nodes("rich") if n.state == m.BatchNodeState.IDLE], 30)[0]
    _assert_same(emu.state.get_node("rich", node.id), client.get_node("rich", node.id))
    for ext in client.list_node_extensions("rich", node.id):
        assert isinstance(ext, m.BatchNodeVMExtension)
    _assert_same(emu.state.node_counts()[0], next(iter(client.list_pool_node_counts())))


def test_job_task_and_schedule_answers_are_what_was_stored(account: tuple[Emulator, BatchClient]) -> None:
    emu, client = account
    _assert_same(emu.state.get_job("richjob"), client.get_job("richjob"))
    _assert_same(emu.state.get_task("richjob", "richtask"), client.get_task("richjob", "richtask"))
    _assert_same(emu.state.get_job_schedule("richschedule"), client.get_job_schedule("richschedule"))
    for status in client.list_job_preparation_and_release_task_status("richjob"):
        stored = next(s for s in emu.state.job_prep_release_status("richjob") if s["nodeId"] == status.node_id)
        _assert_same(stored, status)


def test_supported_images_are_in_the_sdks_types(account: tuple[Emulator, BatchClient]) -> None:
    from batchmagic.emulator.images import SUPPORTED_IMAGES

    answers = list(account[1].list_supported_images())
    assert len(answers) == len(SUPPORTED_IMAGES)
    for stored, answer in zip(SUPPORTED_IMAGES, answers, strict=True):
        _assert_same(stored, answer)
