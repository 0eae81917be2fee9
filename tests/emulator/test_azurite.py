"""Resource and output files through a real Azurite blob endpoint with SAS URLs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as m

from tests.support.emulator import emulator_fixture, free_port, wait_for

AZURITE = Path("/tmp/azurite/node_modules/.bin/azurite-blob")
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

emulator = emulator_fixture(scope="module", allocation_delay=0.2)


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("azurite-blob") or (str(AZURITE) if AZURITE.exists() else None)
    if binary is None:
        pytest.skip("azurite-blob is not installed (npm install azurite)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--location",
            str(tmp_path_factory.mktemp("azurite")),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--disableTelemetry",
            "--silent",
            "--skipApiVersionCheck",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/{ACCOUNT}"
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("azurite did not start")
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_resource_and_output_files_with_azurite(emulator: Any, azurite: str) -> None:
    from azure.storage.blob import (
        BlobServiceClient,
        ContainerSasPermissions,
        generate_blob_sas,
        generate_container_sas,
    )

    service = BlobServiceClient(azurite, credential={"account_name": ACCOUNT, "account_key": KEY})
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
            resource_files=[m.ResourceFile(http_url=f"{azurite}/runs/in/data.txt?{read_sas}", file_path="data.txt")],
            output_files=[
                m.OutputFile(
                    file_pattern=pattern,
                    destination=m.OutputFileDestination(
                        container=m.OutputFileBlobContainerDestination(
                            container_url=f"{azurite}/runs?{write_sas}", path=path
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
