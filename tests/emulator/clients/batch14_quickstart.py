"""A Batch scenario as Microsoft's published Batch Python samples write it, for azure-batch 14.x.

It follows the "batch-python-quickstart" / "batch-python-ffmpeg-tutorial" pattern (config values
changed only): upload input files to a blob container, create a pool whose start task must succeed
(``waitForSuccess``, elevated auto-user), a job, one task per input file with resource files from a
container SAS URL, wait for the tasks, print each task's stdout.txt with the task file API, then
delete the job and the pool. Run by tests/emulator/test_clients.py with the .venv-batch14 interpreter;
the settings come from the environment (BATCH_ACCOUNT_URL, BATCH_ACCOUNT_NAME, BATCH_ACCOUNT_KEY,
STORAGE_CONNECTION_STRING, STORAGE_ACCOUNT_NAME, STORAGE_ACCOUNT_KEY).
"""

import datetime
import io
import os
import sys
import time

import azure.batch.models as batchmodels
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

BATCH_ACCOUNT_URL = os.environ["BATCH_ACCOUNT_URL"]
BATCH_ACCOUNT_NAME = os.environ["BATCH_ACCOUNT_NAME"]
BATCH_ACCOUNT_KEY = os.environ["BATCH_ACCOUNT_KEY"]
STORAGE_ACCOUNT_NAME = os.environ["STORAGE_ACCOUNT_NAME"]
STORAGE_ACCOUNT_KEY = os.environ["STORAGE_ACCOUNT_KEY"]
POOL_ID = "PythonQuickstartPool"
JOB_ID = "PythonQuickstartJob"
POOL_NODE_COUNT = 2
POOL_VM_SIZE = "STANDARD_DS1_V2"
STANDARD_OUT_FILE_NAME = "stdout.txt"


def upload_inputs(blob_service_client, container_name):
    blob_service_client.create_container(container_name)
    for i in range(3):
        blob = blob_service_client.get_blob_client(container_name, f"taskdata{i}.txt")
        blob.upload_blob(io.BytesIO(f"input file {i}\n".encode()), overwrite=True)
    sas_token = generate_container_sas(
        STORAGE_ACCOUNT_NAME,
        container_name,
        account_key=STORAGE_ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2),
    )
    return f"{blob_service_client.url.rstrip('/')}/{container_name}?{sas_token}"


def create_pool(batch_service_client, pool_id):
    print(f"Creating pool [{pool_id}]...")
    new_pool = batchmodels.PoolAddParameter(
        id=pool_id,
        virtual_machine_configuration=batchmodels.VirtualMachineConfiguration(
            image_reference=batchmodels.ImageReference(
                publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts", version="latest"
            ),
            node_agent_sku_id="batch.node.ubuntu 22.04",
        ),
        vm_size=POOL_VM_SIZE,
        target_dedicated_nodes=POOL_NODE_COUNT,
        start_task=batchmodels.StartTask(
            command_line='/bin/bash -c "echo tool-installed > $AZ_BATCH_NODE_SHARED_DIR/tool.txt"',
            wait_for_success=True,
            user_identity=batchmodels.UserIdentity(
                auto_user=batchmodels.AutoUserSpecification(
                    scope=batchmodels.AutoUserScope.pool, elevation_level=batchmodels.ElevationLevel.admin
                )
            ),
        ),
    )
    batch_service_client.pool.add(new_pool)


def create_job(batch_service_client, job_id, pool_id):
    print(f"Creating job [{job_id}]...")
    job = batchmodels.JobAddParameter(id=job_id, pool_info=batchmodels.PoolInformation(pool_id=pool_id))
    batch_service_client.job.add(job)


def add_tasks(batch_service_client, job_id, container_sas_url):
    print(f"Adding 3 tasks to job [{job_id}]...")
    tasks = []
    for idx in range(3):
        command = f'/bin/bash -c "cat taskdata{idx}.txt; cat $AZ_BATCH_NODE_SHARED_DIR/tool.txt"'
        tasks.append(
            batchmodels.TaskAddParameter(
                id=f"Task{idx}",
                command_line=command,
                resource_files=[batchmodels.ResourceFile(storage_container_url=container_sas_url)],
            )
        )
    batch_service_client.task.add_collection(job_id, tasks)


def wait_for_tasks_to_complete(batch_service_client, job_id, timeout):
    timeout_expiration = datetime.datetime.now() + timeout
    print(f"Monitoring all tasks for 'Completed' state, timeout in {timeout}...", end="")
    while datetime.datetime.now() < timeout_expiration:
        print(".", end="")
        sys.stdout.flush()
        tasks = batch_service_client.task.list(job_id)
        incomplete_tasks = [task for task in tasks if task.state != batchmodels.TaskState.completed]
        if not incomplete_tasks:
            print()
            return True
        time.sleep(0.5)
    print()
    raise RuntimeError("ERROR: Tasks did not reach 'Completed' state within timeout period of " + str(timeout))


def print_task_output(batch_service_client, job_id, text_encoding=None):
    print("Printing task output...")
    tasks = batch_service_client.task.list(job_id)
    for task in tasks:
        node_id = batch_service_client.task.get(job_id, task.id).node_info.node_id
        print(f"Task: {task.id}")
        print(f"Node: {node_id}")
        stream = batch_service_client.file.get_from_task(job_id, task.id, STANDARD_OUT_FILE_NAME)
        file_text = b"".join(stream).decode(text_encoding or "utf-8")
        print("Standard output:")
        print(file_text)


def main():
    blob_service_client = BlobServiceClient.from_connection_string(os.environ["STORAGE_CONNECTION_STRING"])
    container_sas_url = upload_inputs(blob_service_client, "input")
    credentials = SharedKeyCredentials(BATCH_ACCOUNT_NAME, BATCH_ACCOUNT_KEY)
    batch_client = BatchServiceClient(credentials, batch_url=BATCH_ACCOUNT_URL)
    try:
        create_pool(batch_client, POOL_ID)
        create_job(batch_client, JOB_ID, POOL_ID)
        add_tasks(batch_client, JOB_ID, container_sas_url)
        wait_for_tasks_to_complete(batch_client, JOB_ID, datetime.timedelta(minutes=2))
        print("  Success! All tasks reached the 'Completed' state within the specified timeout period.")
        print_task_output(batch_client, JOB_ID)
        for node in batch_client.compute_node.list(POOL_ID):
            info = node.start_task_info
            print(f"Start task on {node.id}: {info.state.value} exit {info.exit_code}")
    except batchmodels.BatchErrorException as err:
        print(f"BatchErrorException: {err.error.code}: {err.error.message.value}")
        raise
    finally:
        batch_client.job.delete(JOB_ID)
        batch_client.pool.delete(POOL_ID)
    print("Deleted the job and the pool.")


if __name__ == "__main__":
    main()
