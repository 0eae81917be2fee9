"""Resource and output files through a real Azurite blob endpoint with SAS URLs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from azure.batch import models as m

from tests.support.azurite import ACCOUNT, KEY, RunningAzurite
from tests.support.emulator import emulator_fixture, wait_for

emulator = emulator_fixture(scope="module", allocation_delay=0.2)


def test_resource_and_output_files_with_azurite(emulator: Any, azurite: RunningAzurite) -> None:
    from azure.storage.blob import (
        BlobServiceClient,
        ContainerSasPermissions,
        generate_blob_sas,
        generate_container_sas,
    )

    url = azurite.account_url
    service = BlobServiceClient(url, credential={"account_name": ACCOUNT, "account_key": KEY})
    container = service.create_container("runs")
    container.upload_blob("in/data.txt", b"payload\n")
    expiry = datetime.now(UTC) + timedelta(hours=1)
    read_sas = generate_blob_sas(ACCOUNT, "runs", "in/data.txt", account_key=KEY, permission="r", expiry=expiry)
    write_sas = generate_container_sas(
        ACCOUNT, "runs", account_key=KEY, permission=ContainerSasPermissions(write=True, create=True), expiry=expiry
    )
    client = emulator.client()
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="azurite",
            vm_size="standard_d2s_v3",
            target_dedicated_nodes=1,
            virtual_machine_configuration=m.VirtualMachineConfiguration(
                image_reference=m.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
                node_agent_sku_id="batch.node.ubuntu 22.04",
            ),
        )
    )
    client.create_job(m.BatchJobCreateOptions(id="azurite", pool_info=m.BatchPoolInfo(pool_id="azurite")))
    client.create_task(
        "azurite",
        m.BatchTaskCreateOptions(
            id="t",
            command_line="cat data.txt; mkdir -p out/sub; echo r1 > out/r1.txt; echo r2 > out/sub/r2.txt",
            resource_files=[m.ResourceFile(http_url=f"{url}/runs/in/data.txt?{read_sas}", file_path="data.txt")],
            output_files=[
                m.OutputFile(
                    file_pattern=pattern,
                    destination=m.OutputFileDestination(
                        container=m.OutputFileBlobContainerDestination(
                            container_url=f"{url}/runs?{write_sas}", path=path
                        )
                    ),
                    upload_options=m.OutputFileUploadConfiguration(
                        upload_condition=m.OutputFileUploadCondition.TASK_COMPLETION
                    ),
                )
                for pattern, path in (("../std*.txt", "logs"), ("out/**/*.txt", "results"), ("out/r1.txt", "one.txt"))
            ],
        ),
    )
    task = wait_for(lambda: (t := client.get_task("azurite", "t")).state == m.BatchTaskState.COMPLETED and t)
    assert task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS, task.execution_info.failure_info
    names = sorted(b.name for b in container.list_blobs())
    assert names == [
        "in/data.txt",
        "logs/stderr.txt",
        "logs/stdout.txt",
        "one.txt",
        "results/r1.txt",
        "results/sub/r2.txt",
    ]
    assert container.download_blob("logs/stdout.txt").readall() == b"payload\n"


def test_upload_node_logs_says_what_it_uploaded(emulator: Any, azurite: RunningAzurite) -> None:
    """REST reference, Nodes - Upload Node Logs: the service uploads the node's Batch service logs under
    ``virtualDirectoryName`` in the container the SAS URL names and says how many files. The emulator's
    count is what the container received: Azurite gets the file; an unreachable container gets none."""
    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    service = BlobServiceClient(azurite.account_url, credential={"account_name": ACCOUNT, "account_key": KEY})
    service.create_container("nodelogs")
    expiry = datetime.now(UTC) + timedelta(hours=1)
    sas = generate_container_sas(
        ACCOUNT, "nodelogs", account_key=KEY, permission=ContainerSasPermissions(write=True, create=True), expiry=expiry
    )
    client = emulator.client()
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="logs",
            vm_size="standard_d2s_v3",
            target_dedicated_nodes=1,
            virtual_machine_configuration=m.VirtualMachineConfiguration(
                image_reference=m.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
                node_agent_sku_id="batch.node.ubuntu 22.04",
            ),
        )
    )
    node = wait_for(lambda: [n for n in client.list_nodes("logs") if n.state == m.BatchNodeState.IDLE], 30)[0]
    start = datetime.now(UTC) - timedelta(hours=1)
    result = client.upload_node_logs(
        "logs",
        node.id,
        m.UploadBatchServiceLogsOptions(container_url=f"{azurite.account_url}/nodelogs?{sas}", start_time=start),
    )
    assert result.number_of_files_uploaded == 1
    assert azurite.blob_names("nodelogs") == [f"{result.virtual_directory_name}/batch-agent.log"]
    unreachable = m.UploadBatchServiceLogsOptions(
        container_url="http://nowhere.invalid/nodelogs?sig=x", start_time=start
    )
    assert client.upload_node_logs("logs", node.id, unreachable).number_of_files_uploaded == 0
