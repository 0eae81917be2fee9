"""Uploading a run: everything its tasks read, then each task's spec (its URLs, its parameters, nothing else).

The step between packaging (:mod:`batchmagic.package`) and launching (:meth:`~batchmagic.run.run.Run.launch`):
the ``--input`` files (by content, once), the large values (by content, once), the bundle, then one
:class:`~batchmagic.protocol.TaskSpec` per task, every URL signed until the run's SAS expiry.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import cloudpickle

from batchmagic.backends.azure.vmsizes import temp_disk_bytes
from batchmagic.config import Settings
from batchmagic.data import az_paths
from batchmagic.errors import ConfigError
from batchmagic.options import RunOptions
from batchmagic.package.capture import CapturedCell
from batchmagic.package.inputs import HashCache, grant_paths, stage_inputs
from batchmagic.protocol import FolderSpec, Layout, ObjectRef, OutputTarget, TaskSpec
from batchmagic.run.run import LargeUploadWarning, Run
from batchmagic.storage import BlobStore, Store

__all__ = ["LARGE_UPLOAD_WARNING", "shipped", "upload"]

LARGE_UPLOAD_WARNING = 1_000_000_000  # bytes of shipped variables above which submit suggests --input


def upload(
    run: Run, cell: str, captured: CapturedCell, options: RunOptions, settings: Settings, *, hashes: HashCache
) -> None:
    """Everything the tasks read, then each task's spec: its URLs, its parameters, nothing else."""
    store, expiry = run.store, run.sas_expiry
    read = az_paths(cell)  # az:// paths the cell names literally: each gets a read URL
    remote = bool(read) or any(spec.remote for spec in options.inputs)
    sign = signer(store, settings) if remote else None
    disk = temp_disk_bytes(run.vm_size) if run.backend.name == "azure" else None
    folder = run.folder
    files = [*options.inputs, *(folder.inputs if folder else ())]  # --input, and the files the cell names
    try:
        staged = stage_inputs(
            files, store, expiry=expiry, hashes=hashes, signer=sign, disk=(run.vm_size, disk) if disk else None
        )
        grants = grant_paths(read, sign, expiry=expiry)
    finally:
        if sign is not None and sign is not store:  # a client of its own: its sockets go with it
            sign.close()
    run.uploaded_input_bytes = staged.uploaded
    shared = TaskSpec(
        run_id=run.id,
        task_id="",
        bundle=store.url(Layout.bundle(run.id), permissions="r", expiry=expiry),
        log="",
        result="",
        # Blob Storage: an append block at most every 0.25 s while the cell prints (one write
        # transaction each; a line after a quiet spell goes at once): lines show within 0.5 s.
        log_interval=0.2 if store.kind == "local" else 0.25,
        log_patience=run.log_patience,
        objects=upload_objects(run, captured, hashes),
        grants=grants,
        inputs=tuple(staged.files),
        input_concurrency=settings.input_concurrency,
        env=dict(options.env),
        gpus=run.gpus,  # the runner checks it sees them before the cell runs, and samples them
        machine=run.vm_size if run.backend.name == "azure" else "",
    )
    store.put_file(Layout.bundle(run.id), captured.path)
    outbox = run.outbox.write_url(expiry=expiry) if options.output_files or folder else ""
    sweep = options.sweep

    def write(index: int) -> None:
        task_id = run.task_ids[index]
        spec = replace(
            shared,
            task_id=task_id,
            log=store.url(Layout.log(run.id, task_id), permissions="racw", expiry=expiry),
            result=store.url(Layout.result(run.id, task_id), permissions="cw", expiry=expiry),
            params={k: cloudpickle.dumps(v).hex() for k, v in (sweep[index] if sweep else {}).items()},
            outputs=OutputTarget(outbox, Layout.outputs(run.id, task_id), options.output_files) if outbox else None,
            folder=(
                FolderSpec(str(folder.root), folder.dirs, outbox, Layout.outputs(run.id, task_id)) if folder else None
            ),
        )
        store.put_bytes(Layout.spec(run.id, task_id), spec.to_json())

    if store.kind == "local":  # a file each, written in microseconds: threads would cost more than they save
        for index in range(len(run.task_ids)):
            write(index)
        return
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(write, range(len(run.task_ids))))


def upload_objects(run: Run, captured: CapturedCell, hashes: HashCache) -> dict[str, ObjectRef]:
    """Large values by content: uploaded only when the store lacks them; a read URL for each."""
    objects = {}
    for name, obj in captured.objects.items():
        if not run.store.holds(obj.key, obj.size, sha256=hashes.sha256):
            run.store.put_file(obj.key, obj.path)
            run.uploaded_object_bytes += obj.size
        url = run.store.url(obj.key, permissions="r", expiry=run.sas_expiry)
        objects[name] = ObjectRef(url, obj.sha256, obj.size)
    return objects


def signer(store: Store, settings: Settings) -> BlobStore | None:
    """What signs read URLs for ``az://`` data: the run's Blob store, else one from the settings."""
    if isinstance(store, BlobStore):
        return store
    connection = settings.secrets.storage_connection_string
    if not connection:
        return None
    try:
        return BlobStore.from_connection_string(connection, settings.container, patience=settings.storage_patience)
    except ValueError as err:
        raise ConfigError(f"AZURE_STORAGE_CONNECTION_STRING is not usable: {err}") from None


def shipped(captured: CapturedCell) -> str:
    """The uploading phase's detail, and a warning when the variables are too big to ship this way."""
    size = captured.size + sum(o.size for o in captured.objects.values())
    if size > LARGE_UPLOAD_WARNING:
        warnings.warn(
            f"the cell ships {size / 1e9:.1f} GB of variables; for data this big, --input "
            "(az://container/prefix or a local path) downloads it in parallel on the node instead",
            LargeUploadWarning,
            stacklevel=5,
        )
    return f"{size / 1e6:,.1f} MB of cell and variables"
