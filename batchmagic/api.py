"""The Python API: :func:`submit` a cell, get a :class:`Run` back. The magics are a thin layer on it.

Examples
--------
In [1]: import batchmagic
In [2]: run = batchmagic.submit("y = x * 2\\nprint(y)", {"x": 21}, backend="local")
In [3]: run.wait()
42
Out[3]: {'y': 42}
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import uuid
import warnings
from collections.abc import Iterable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cloudpickle

from batchmagic.backends.base import Backend, Phase, TaskSubmission
from batchmagic.capture import CapturedCell, capture, check_cell
from batchmagic.config import DEFAULT_TIMEOUT, DEFAULT_VM_SIZE, check_home, default_backend, default_home, parse_timeout
from batchmagic.data import az_paths
from batchmagic.errors import BatchMagicError, ConfigError, RunCancelled, RunFailed
from batchmagic.image import plan_image
from batchmagic.inputs import (
    HashCache,
    InputSpec,
    StagedInputs,
    grant_paths,
    parse_input,
    parse_output,
    stage_inputs,
)
from batchmagic.ledger import Ledger
from batchmagic.run import LargeUploadWarning, Run, UpdateCallback
from batchmagic.storage import BlobStore
from batchmagic.sweep import check_size, task_ids_for
from batchmagic.vmsizes import temp_disk_bytes

__all__ = ["Run", "Session", "submit", "default_session"]

log = logging.getLogger("batchmagic.api")

LARGE_UPLOAD_WARNING = 1_000_000_000  # bytes of shipped variables above which submit suggests --input


class Session:
    """This process's runs and the backends they use (one per kernel).

    Parameters
    ----------
    home : Path, optional
        State and local run data (``BATCHMAGIC_HOME``, default ``~/.batchmagic``).
    """

    def __init__(self, home: Path | None = None) -> None:
        self._home = Path(home) if home else None
        self.runs: list[Run] = []
        self._backends: dict[tuple[str, Path, tuple[tuple[str, Any], ...]], Backend] = {}
        self._ledgers: dict[Path, Ledger] = {}
        self.client_id = uuid.uuid4().hex[:12]
        self.hashes = HashCache()  # sha256 of local inputs, so unchanged data is hashed once

    def home(self, home: Path | str | None = None) -> Path:
        return check_home(Path(home) if home else self._home or default_home())

    def ledger(self, home: Path) -> Ledger:
        if home not in self._ledgers:
            self._ledgers[home] = Ledger(home, client_id=self.client_id)
        return self._ledgers[home]

    def backend(self, name: str | Backend | None = None, *, home: Path | str | None = None, **config: Any) -> Backend:
        """The backend called ``name`` (created once per session and home)."""
        if isinstance(name, Backend):
            return name
        name = (name or default_backend()).lower()
        home = self.home(home)
        key = (name, home, tuple(sorted(config.items())))
        if key not in self._backends:
            if name == "local":
                from batchmagic.backends.local import LocalBackend

                self._backends[key] = LocalBackend(home)
            elif name == "azure":
                from batchmagic.backends.azure import AzureBackend

                self._backends[key] = AzureBackend.from_config(**config)
            else:
                raise ConfigError(f"backend {name!r} is not one of: local, azure")
        return self._backends[key]

    def submit(
        self,
        cell: str,
        namespace: Mapping[str, Any] | None = None,
        *,
        backend: str | Backend | None = None,
        home: Path | str | None = None,
        vm_size: str = DEFAULT_VM_SIZE,
        name: str | None = None,
        outputs: Iterable[str] | None = None,
        timeout: float | str | None = None,
        env: Mapping[str, str] | None = None,
        nodes: int = 1,
        low_priority: bool = False,
        retries: int = 0,
        sweep: list[dict[str, Any]] | None = None,
        slots_per_node: int = 1,
        inputs: Iterable[str] = (),
        output_files: Iterable[str] = (),
        input_concurrency: int = 16,
        on_update: UpdateCallback | None = None,
        backend_config: Mapping[str, Any] | None = None,
        image: str | None = None,
        container: bool = False,
        requirements: str | Path | None = None,
        pip: Iterable[str] = (),
        registry: str | None = None,
        base_image: str | None = None,
    ) -> Run:
        """Package ``cell`` with what it reads from ``namespace`` and start it; see :func:`submit`.

        Everything that can be checked is checked before anything is uploaded or created. The
        image (``image``, ``container``, ``requirements``, ``pip``, ``registry``, ``base_image``:
        see :func:`batchmagic.image.plan_image`) is resolved after packaging, before uploading.
        """
        check_cell(cell)  # syntax, emptiness, star imports: before anything else
        seconds = parse_timeout(timeout if timeout is not None else DEFAULT_TIMEOUT)
        if retries < 0:
            raise ConfigError(f"--retries must be 0 or more, not {retries}")
        if nodes < 1:
            raise ConfigError(f"--nodes must be at least 1, not {nodes}")
        if slots_per_node < 1:
            raise ConfigError(f"--slots-per-node must be at least 1, not {slots_per_node}")
        if sweep is not None:
            check_size(sweep)
        input_specs = [parse_input(token) for token in inputs]
        output_globs = [parse_output(pattern) for pattern in output_files]
        home_path = self.home(home)
        config = {**dict(backend_config or {}), **({"image": image} if image else {})}
        chosen = self.backend(backend, home=home_path, **config)
        image_request = plan_image(
            chosen.name, image=image, configured_image=chosen.default_image, container=container,
            registry=registry, base_image=base_image, requirements=requirements, pip=pip,
        )  # fmt: skip
        run_id = _new_run_id(name)
        task_ids = task_ids_for(len(sweep)) if sweep is not None else ["task-0"]
        submission = TaskSubmission(
            run_id=run_id,
            name=name or run_id,
            task_ids=task_ids,
            spec_keys={tid: f"runs/{run_id}/{tid}/spec.json" for tid in task_ids},
            vm_size=vm_size,
            timeout=seconds,
            env=dict(env or {}),
            nodes=nodes,
            low_priority=low_priority,
            retries=retries,
            slots_per_node=slots_per_node,
        )
        chosen.validate(submission)

        run = Run(
            run_id=run_id,
            name=submission.name,
            backend=chosen,
            vm_size=vm_size,
            timeout=seconds,
            task_ids=task_ids,
            params=sweep,
            namespace=namespace if isinstance(namespace, MutableMapping) else None,
        )
        run.source = cell
        if on_update is not None:
            run.subscribe(on_update)
        run._enter(Phase.PACKAGING)
        with tempfile.TemporaryDirectory(prefix="batchmagic-") as tmp:
            try:
                provided = {key for row in sweep for key in row} if sweep else ()
                captured = capture(cell, namespace or {}, Path(tmp) / "bundle", outputs=outputs, provided=provided)
                if image_request is not None:
                    submission.image = image_request.resolve(captured, run._enter)
            except Exception as err:
                run._fail(err)
                raise
            shipped = captured.size + sum(o.size for o in captured.objects.values())
            run._enter(Phase.UPLOADING, f"{shipped / 1e6:,.1f} MB of cell and variables")
            if shipped > LARGE_UPLOAD_WARNING:
                warnings.warn(
                    f"the cell ships {shipped / 1e9:.1f} GB of variables; for data this big, --input "
                    "(az://container/prefix or a local path) downloads it in parallel on the node instead",
                    LargeUploadWarning,
                    stacklevel=2,
                )
            try:
                staged = self._stage(run, input_specs)
                objects = self._upload_objects(run, captured)
                chosen.store.put_file(f"{run.prefix}bundle", captured.path)
                extra: dict[str, Any] = {}
                if objects:
                    extra["objects"] = objects
                grants = grant_paths(az_paths(cell), run.store, expiry=run.sas_expiry)
                if grants:
                    extra["grants"] = grants
                if staged.files:
                    extra.update(inputs=staged.files, concurrency=input_concurrency)
                if output_globs:
                    url = run.outbox.write_url(expiry=run.sas_expiry)
                    extra["outputs"] = {"url": url, "prefix": "", "patterns": output_globs}
                self._write_specs(run, submission, sweep, extra)
            except BatchMagicError as err:
                run._fail(err)
                raise
            except Exception as err:  # the store refused or could not be reached: one line, not a traceback
                failure = RunFailed(
                    f"could not store run {run.name}'s data in {run.store.describe()}: {_first_line(err)}"
                )
                run._fail(failure)
                raise failure from err
        ledger = self.ledger(home_path)
        ledger.record("submitted", run.id, backend=chosen.name, name=run.name, vm_size=vm_size)
        run._ledger = ledger
        submission.ledger_id = ledger.client_id
        submission.sas_expiry = run.sas_expiry
        self.runs.append(run)
        try:
            chosen.submit(submission)
        except BaseException as err:  # Ctrl-C included: a half-made job must not outlive this
            run._fail(
                err if isinstance(err, Exception) else RunCancelled(f"run {run.name} interrupted while submitting")
            )
            run._release_quietly()
            raise
        run._enter(Phase.QUEUED)
        return run

    def _upload_objects(self, run: Run, captured: CapturedCell) -> dict[str, dict[str, Any]]:
        """Large values by content: uploaded only when the store lacks them; a read URL for each."""
        expiry = run.sas_expiry
        objects = {}
        for name, obj in captured.objects.items():
            if not run.store.exists(obj.key):
                run.store.put_file(obj.key, obj.path)
                run.uploaded_object_bytes += obj.size
            url = run.store.url(obj.key, permissions="r", expiry=expiry)
            objects[name] = {"url": url, "sha256": obj.sha256, "size": obj.size}
        return objects

    def _stage(self, run: Run, specs: list[InputSpec]) -> StagedInputs:
        """Upload the local inputs the store lacks (by content) and sign a read URL for every input file."""
        disk = temp_disk_bytes(run.vm_size) if run.backend.name == "azure" else None
        staged = stage_inputs(
            specs, run.store, expiry=run.sas_expiry, hashes=self.hashes, disk=(run.vm_size, disk) if disk else None
        )
        run.uploaded_input_bytes = staged.uploaded
        return staged

    def _write_specs(
        self,
        run: Run,
        submission: TaskSubmission,
        sweep: list[dict[str, Any]] | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Each task's spec: the URLs of its bundle (read), log (append) and result (write), its
        parameters, nothing else."""
        store = run.store
        expiry = run.sas_expiry
        bundle_url = store.url(f"{run.prefix}bundle", permissions="r", expiry=expiry)

        def write(index: int) -> None:
            task_id = run.task_ids[index]
            spec = {
                "run_id": run.id,
                "task_id": task_id,
                "bundle": bundle_url,
                "log": store.url(run.log_key(task_id), permissions="acw", expiry=expiry),
                "result": store.url(run.result_key(task_id), permissions="cw", expiry=expiry),
                "log_interval": 0.2 if store.kind == "local" else 1.0,
                "params": {k: cloudpickle.dumps(v).hex() for k, v in (sweep[index] if sweep else {}).items()},
                **(extra or {}),
            }
            if "outputs" in spec:
                spec["outputs"] = {**spec["outputs"], "prefix": run.outputs_prefix(task_id)}
            store.put_bytes(submission.spec_keys[task_id], json.dumps(spec).encode())

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(write, range(len(run.task_ids))))

    def teardown(self, *, everything: bool = False, blobs: bool = False, backend: Backend | None = None) -> list[str]:
        """Stop and release whatever this session started that still runs or holds resources.

        Parameters
        ----------
        everything : bool
            Also find what other clients left behind (batchmagic-tagged jobs and pools) on ``backend``.
        blobs : bool
            Also delete the run data (bundles, logs, results).

        Returns a line per thing removed; calling it again removes (and returns) nothing.
        """
        removed: list[str] = []
        for run in self.runs:
            try:
                lines = run.backend.release(run.id)
            except Exception as err:  # one stuck run must not keep the others alive
                removed.append(f"nothing of {run.name}: {err} (run %azbatch_teardown again)")
                continue
            removed.extend(lines)
            if lines and run._ledger is not None:
                run._ledger.record("released", run.id, removed=lines)
            if not run.done:
                run._mark_cancelled()
            if blobs:
                count = run.store.delete_prefix(run.prefix)
                if run.outbox is not run.store:
                    count += run.outbox.delete_prefix(run.prefix)
                    if isinstance(run.outbox, BlobStore):
                        run.outbox.delete_container()
                if count:
                    removed.append(f"{count} files of run data of {run.name}")
        if everything and backend is not None and hasattr(backend, "teardown_all"):
            removed.extend(backend.teardown_all(blobs=blobs))
        return removed


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _new_run_id(name: str | None) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", (name or "run").lower()).strip("-")[:32] or "run"
    return f"{stem}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


_default: Session | None = None


def default_session() -> Session:
    """The process-wide session that :func:`submit` and the magics use."""
    global _default
    if _default is None:
        _default = Session()
    return _default


def submit(cell: str, namespace: Mapping[str, Any] | None = None, **options: Any) -> Run:
    """Run ``cell`` out of this process with the values it reads from ``namespace``.

    Parameters
    ----------
    cell : str
        Python source of the cell.
    namespace : mapping, optional
        Where the cell's inputs come from (a notebook's ``user_ns``, or a plain dict).
    backend : str or Backend, optional
        ``"local"`` or ``"azure"``; default from ``BATCHMAGIC_BACKEND`` / ``AZURE_BATCH_ENDPOINT``.
    vm_size, name, outputs, timeout, env, home, on_update
        As the ``%%azbatch`` flags of the same names; ``timeout`` in seconds or ``"30m"``.

    Returns
    -------
    Run
        Already started; call :meth:`Run.wait` for the outputs.
    """
    return default_session().submit(cell, namespace, **options)
