"""What travels between the notebook and a task: the one contract both sides import.

Standard library only: the runner imports it inside the training image, the client beside the SDKs.
Everything a backend, the runner and the client tell each other is here, and nothing else:

- :class:`Layout`: the run store's keys. A run keeps its data under ``runs/<run-id>/``::

      runs/<run-id>/bundle                      the cell and its values (batchmagic.package.bundle), read by every task
      runs/<run-id>/<task-id>/spec.json         a TaskSpec: what the runner is told (the client writes it)
      runs/<run-id>/<task-id>/output.log        log records, appended by the runner while the cell runs
      runs/<run-id>/<task-id>/result            a TaskOutcome, written once by the runner at the end
      runs/<run-id>/<task-id>/outputs/          --output files, and the files the cell created or changed
                                                under its working directory (in the run's own container on Azure)
      runs/<run-id>/batch/<task-id>/            the task process's own stdout/stderr (Azure Batch)
      runs/<run-id>/outputs.ipynb               the run's record: the cell and all it printed (the client)
      objects/sha256/<hash>                     a big shipped value, by content, shared across runs
      inputs/sha256/<hash>                      a local --input file, by content, shared across runs

- :class:`TaskSpec` (client -> runner, JSON) and :class:`TaskOutcome` (runner -> client), each with a
  schema version. A runner refuses a spec newer than it understands (:class:`SpecVersionError`):
  the training image was built by an older batchmagic than the client.
- :func:`encode_log_record` / :func:`decode_log_records`: one JSON line per record of the task's log.
- :class:`LedgerEntry`: one line of the client's ledger (``BATCHMAGIC_HOME/ledger.jsonl``), which every
  kernel and terminal of the machine appends to and reads (:mod:`batchmagic.run.ledger`), with its own version.

The runner gets URLs only (``file://`` locally, SAS URLs on Azure); the client works with store keys.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "Layout",
    "SPEC_FILENAME",
    "LOG_TAIL_LIMIT",
    "TaskSpec",
    "ObjectRef",
    "InputFile",
    "OutputTarget",
    "FolderSpec",
    "TaskError",
    "TaskOutcome",
    "SpecVersionError",
    "LogRecord",
    "PROGRESS_VERSION",
    "HEARTBEAT",
    "SILENT",
    "Progress",
    "STREAMS",
    "encode_log_record",
    "decode_log_records",
    "count_lines",
    "sha256_file",
    "LEDGER_VERSION",
    "LEDGER_EVENTS",
    "LedgerSubmission",
    "LedgerEntry",
    "LedgerLineError",
]

#: Version of TaskSpec and TaskOutcome. Raise it when a field changes meaning or a runner must
#: understand a new one; a field a runner may ignore does not need it.
SCHEMA_VERSION = 3  # 2: TaskSpec.env (a runner that ignored it would drop the cell's --env); 3: TaskSpec.folder

#: The most bytes of log records a task's result carries when storage would not take them (TaskOutcome.log_tail).
LOG_TAIL_LIMIT = 1 << 20

#: The spec's file name in the task's working directory (Azure delivers it as a resource file).
SPEC_FILENAME = "spec.json"


class Layout:
    """The run store's keys: every key either side uses is built here."""

    RUNS = "runs/"

    @staticmethod
    def run_prefix(run_id: str) -> str:
        return f"runs/{run_id}/"

    @staticmethod
    def bundle(run_id: str) -> str:
        return f"runs/{run_id}/bundle"

    @staticmethod
    def spec(run_id: str, task_id: str) -> str:
        return f"runs/{run_id}/{task_id}/{SPEC_FILENAME}"

    @staticmethod
    def log(run_id: str, task_id: str) -> str:
        return f"runs/{run_id}/{task_id}/output.log"

    @staticmethod
    def result(run_id: str, task_id: str) -> str:
        return f"runs/{run_id}/{task_id}/result"

    @staticmethod
    def outputs(run_id: str, task_id: str) -> str:
        return f"runs/{run_id}/{task_id}/outputs/"

    @staticmethod
    def process_files(run_id: str, task_id: str) -> str:
        """Where Batch uploads the task process's own ``stdout.txt`` and ``stderr.txt`` (no trailing /)."""
        return f"runs/{run_id}/batch/{task_id}"

    @staticmethod
    def process_file(run_id: str, task_id: str, name: str) -> str:
        """One of those files on Azure Batch: ``stdout.txt`` or ``stderr.txt``."""
        return f"runs/{run_id}/batch/{task_id}/{name}"

    @staticmethod
    def spec_task(run_id: str, key: str) -> str | None:
        """The task whose spec ``key`` is, for a key listed under :meth:`run_prefix`; None for another key."""
        prefix = f"runs/{run_id}/"
        parts = key[len(prefix) :].split("/") if key.startswith(prefix) else []
        return parts[0] if len(parts) == 2 and parts[1] == SPEC_FILENAME else None

    @staticmethod
    def local_process_file(run_id: str, task_id: str, name: str) -> str:
        """The local backend's ``stdout.txt`` / ``stderr.txt``, beside the task's spec."""
        return f"runs/{run_id}/{task_id}/{name}"

    @staticmethod
    def group(run_id: str) -> str:
        """A distributed run's :class:`RankGroup`, which every node's supervisor reads."""
        return f"runs/{run_id}/group.json"

    @staticmethod
    def node_state(run_id: str, node_rank: int) -> str:
        """A distributed run's node's :class:`NodeState`, rewritten by its supervisor as its ranks start and end."""
        return f"runs/{run_id}/nodes/{node_rank}.json"

    @staticmethod
    def record(run_id: str) -> str:
        return f"runs/{run_id}/outputs.ipynb"

    @staticmethod
    def object(sha256: str) -> str:
        return f"objects/sha256/{sha256}"

    @staticmethod
    def input(sha256: str) -> str:
        return f"inputs/sha256/{sha256}"


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's content, hex: how objects and inputs are addressed and checked."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class SpecVersionError(ValueError):
    """A spec or outcome from a newer batchmagic than this side understands."""


# --- client -> runner ---


@dataclass(frozen=True)
class ObjectRef:
    """A big shipped value stored apart by content: the runner downloads, checks and unpickles it."""

    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class InputFile:
    """One ``--input`` file for the task's working directory."""

    url: str
    path: str  # relative to the working directory
    size: int
    sha256: str = ""  # local inputs: checked on the node


@dataclass(frozen=True)
class OutputTarget:
    """Where the ``--output`` files go: a write-only container URL, a key prefix, the globs."""

    url: str
    prefix: str
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class FolderSpec:
    """The notebook's folder, mirrored in the task's working directory (see :mod:`batchmagic.package.folder`).

    The files the cell names arrive as ``inputs``; the runner creates ``dirs`` (the folder's skeleton)
    before the cell, and afterwards uploads each file the cell created or changed under the working
    directory to ``prefix + relative path`` under ``url`` (write-only: the run's outbox).
    """

    origin: str  # the notebook's folder on the client, for messages
    dirs: tuple[str, ...]  # relative directories to create before the cell
    url: str
    prefix: str


DEFAULT_INPUT_CONCURRENCY = 16


@dataclass(frozen=True)
class TaskSpec:
    """Everything the runner is told, as ``spec.json``. URLs only: never a key.

    ``params`` are a sweep task's values, each cloudpickled and hex-encoded (the runner unpickles them
    into the namespace); ``grants`` are read URLs for the ``az://`` paths the cell names literally;
    ``env`` the ``--env`` variables, which the runner sets before the cell runs: they travel here, readable
    only through the task's SAS, never in the Batch task definition or a command line.
    """

    run_id: str
    task_id: str
    bundle: str  # read
    log: str  # append, and read its length (a retried append, a task run again)
    result: str  # create + write
    log_interval: float = 0.2
    log_patience: float = 120.0  # seconds the runner tries to store its log's rest at the end (then: the result)
    params: dict[str, str] = field(default_factory=dict)
    objects: dict[str, ObjectRef] = field(default_factory=dict)
    grants: dict[str, str] = field(default_factory=dict)
    inputs: tuple[InputFile, ...] = ()
    input_concurrency: int = DEFAULT_INPUT_CONCURRENCY
    outputs: OutputTarget | None = None
    env: dict[str, str] = field(default_factory=dict)
    # The GPUs the task's machine has (from its VM size; locally, the host's): the runner checks that
    # the cell sees them before it runs (a preflight) and samples them every ``gpu_interval`` seconds.
    # A runner that ignores these just skips both.
    gpus: int = 0
    gpu_interval: float = 5.0
    machine: str = ""  # the VM size, named in the preflight's line
    folder: FolderSpec | None = None
    schema: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> TaskSpec:
        """Parse a spec; refuse one from a newer batchmagic, with both versions in one line.

        Raises
        ------
        SpecVersionError
            The spec's schema is newer than :data:`SCHEMA_VERSION`.
        """
        raw: dict[str, Any] = json.loads(data)
        version = int(raw.get("schema", 1))
        if version > SCHEMA_VERSION:
            raise SpecVersionError(
                f"this task's spec has schema version {version}, but the runner in its image understands up to "
                f"{SCHEMA_VERSION}: the image was built by an older batchmagic; rebuild it with this client's "
                "version (drop --image, or rebuild the configured image)"
            )
        out = raw.get("outputs")
        outputs = OutputTarget(out["url"], out["prefix"], tuple(out["patterns"])) if out else None
        mirror = raw.get("folder")
        folder = (
            FolderSpec(mirror["origin"], tuple(mirror["dirs"]), mirror["url"], mirror["prefix"]) if mirror else None
        )
        return cls(
            run_id=raw["run_id"],
            task_id=raw["task_id"],
            bundle=raw["bundle"],
            log=raw["log"],
            result=raw["result"],
            log_interval=float(raw.get("log_interval", 0.2)),
            log_patience=float(raw.get("log_patience", 120.0)),
            params=dict(raw.get("params", {})),
            objects={name: ObjectRef(**obj) for name, obj in raw.get("objects", {}).items()},
            grants=dict(raw.get("grants", {})),
            inputs=tuple(InputFile(**item) for item in raw.get("inputs", [])),
            input_concurrency=int(raw.get("input_concurrency", DEFAULT_INPUT_CONCURRENCY)),
            outputs=outputs,
            env={str(k): str(v) for k, v in raw.get("env", {}).items()},
            gpus=int(raw.get("gpus", 0)),
            gpu_interval=float(raw.get("gpu_interval", 5.0)),
            machine=str(raw.get("machine", "")),
            folder=folder,
            schema=version,
        )


#: Seconds between a node supervisor's heartbeats (a write of its :class:`NodeState` with one more ``beat``)
#: while its ranks run: a blob write each, about 1,800 an hour per node (a fraction of a cent next to the
#: node's price).
HEARTBEAT = 2.0
#: Seconds a node's ``beat`` may stand still, by the reader's own clock, before the node counts as lost
#: (hung, or gone with its VM): several beats missed. Readers (the primary's supervisor, the client) end the
#: run then, rather than leave its ranks in a collective for PyTorch's 30-minute timeout.
SILENT = 10.0


@dataclass(frozen=True)
class RankGroup:
    """A distributed run as each node's supervisor (``python -m batchmagic.runner.ranks``) is told it:
    the ranks' spec URLs (rank ``k`` runs ``specs[k]``), each node's state URL (read and write: every
    supervisor reads the others' to see a rank fail anywhere), the layout of ranks and rank 0's port."""

    run_id: str
    nodes: int
    procs_per_node: int
    master_port: int
    specs: tuple[str, ...]
    states: tuple[str, ...]
    schema: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RankGroup:
        raw: dict[str, Any] = json.loads(data)
        version = int(raw.get("schema", 1))
        if version > SCHEMA_VERSION:
            raise SpecVersionError(
                f"this run's rank group has schema version {version}, but the runner in its image understands up "
                f"to {SCHEMA_VERSION}: rebuild the image with this client's batchmagic"
            )
        return cls(
            run_id=raw["run_id"],
            nodes=int(raw["nodes"]),
            procs_per_node=int(raw["procs_per_node"]),
            master_port=int(raw["master_port"]),
            specs=tuple(raw["specs"]),
            states=tuple(raw["states"]),
            schema=version,
        )


@dataclass(frozen=True)
class RankState:
    """One rank as its node's supervisor saw it: ``code`` None while it runs; ``stopped``: its supervisor
    ended it because a rank failed elsewhere (``after`` names that rank)."""

    rank: int
    started: float
    pid: int = 0  # its process on the node
    code: int | None = None
    ended: float | None = None
    stopped: bool = False
    after: int | None = None


@dataclass(frozen=True)
class NodeState:
    """What a node's supervisor writes as its ranks start and end: which node it is and how they fare."""

    node_rank: int
    node_id: str
    address: str
    ranks: tuple[RankState, ...] = ()
    done: bool = False  # every rank of the node has ended
    #: When the node's supervisor started (its clock, ``time.time()``): a task requeued after a node restart
    #: runs every instance again, and a state older than the attempt is the previous attempt's.
    since: float = 0.0
    #: When the node's coordination command started (its clock; 0.0 where the node cannot say): how long the
    #: node took from there to its ranks' first lines is its own start's critical path (bench/distributed.py).
    launched: float = 0.0
    #: The node's heartbeat: one more at every write, which the supervisor makes at least every few seconds
    #: while its ranks run. A reader tells a silent node (hung, or lost) by this count not moving on its own
    #: clock: the nodes' clocks are never compared. 0: a supervisor that beats not (an older batchmagic).
    beat: int = 0
    #: The primary's only: the node ranks it found silent past its bound (or that never wrote a state), whose
    #: ranks it ended the run for: their ranks are the run's cause, the others' stopped after them.
    lost: tuple[int, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> NodeState:
        raw: dict[str, Any] = json.loads(data)
        return cls(
            node_rank=int(raw["node_rank"]),
            node_id=str(raw.get("node_id", "")),
            address=str(raw.get("address", "")),
            ranks=tuple(RankState(**r) for r in raw.get("ranks", ())),
            done=bool(raw.get("done", False)),
            since=float(raw.get("since", 0.0)),
            launched=float(raw.get("launched", 0.0)),
            beat=int(raw.get("beat", 0)),
            lost=tuple(int(n) for n in raw.get("lost", ())),
        )


# --- runner -> client ---


@dataclass(frozen=True)
class TaskError:
    """An exception of the cell (or of the runner): its type's name, message and formatted traceback."""

    type: str
    message: str
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskOutcome:
    """What a task leaves as its ``result``: written once by the runner, whatever happened.

    ``phase`` says where it ended: ``"cell"`` (the cell ran: ``ok`` tells whether it raised),
    ``"setup"`` (the runner failed before the cell ran), ``"preflight"`` (the GPUs the machine should have
    were not visible in the container: the cell did not run), ``"terminated"`` (SIGTERM: cancelled or out
    of time), ``"result"`` (the outcome itself could not be written whole), ``"exit"`` (the cell
    called ``sys.exit(n)`` with a non-zero ``n``: ``error.message`` is ``repr(n)``). ``outputs`` are the names
    the cell bound, and those it read and changed in place (also in ``changed``). The names a cell that ended
    bound are cloudpickled together, as one :class:`SharedOutputs` each of their entries holds (the same
    bytes object, stored once), so that objects they share stay shared; when that pickle fails, each is
    cloudpickled apart, so one that cannot travel does not sink the others. A single cell that raised or
    exited (``ok`` false, phase ``"cell"`` or ``"exit"``) carries them too (each apart), and ``skipped`` and
    ``deleted``: what it did before the raise, which the notebook keeps (a sweep's task, a rank and a
    terminated task carry none).
    A single cell that ended on an expression carries its value, to become the notebook's ``Out[n]``:
    cloudpickled in ``value``, or, when it is the object a name in ``outputs`` holds, that name in
    ``value_name`` (sent once). Its ``execute_result`` display is marked :data:`VALUE_MARK`.
    """

    ok: bool
    phase: str = "cell"
    error: TaskError | None = None
    outputs: dict[str, bytes] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it could not be pickled
    deleted: tuple[str, ...] = ()  # names the cell deleted
    changed: tuple[str, ...] = ()  # names in outputs the cell did not assign but changed in place
    random_state: str = ""  # the global generators' state the cell left, if it drew (package.randomness)
    displays: tuple[dict[str, Any], ...] = ()  # nbformat output objects, in order
    value: bytes = b""  # the last expression's value, cloudpickled (a single cell)
    value_name: str = ""  # or the name in outputs that holds that very object
    files: tuple[tuple[str, int], ...] = ()  # --output files uploaded: (relative path, size)
    unmatched: tuple[str, ...] = ()  # --output globs that matched nothing
    written: tuple[tuple[str, int, str], ...] = ()  # files the cell created or changed: (path, size, sha256)
    task_id: str = ""
    started: float | None = None
    ended: float | None = None
    log_errors: int = 0  # lines of the log that could not be stored (storage away too long, a full backlog)
    log_tail: bytes = b""  # the latest of those, as log records (at most LOG_TAIL_LIMIT bytes): the client shows them
    schema: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        """A pickle of plain builtins (no class of ours), so either side can read it with ``pickle``."""
        return pickle.dumps(asdict(self), protocol=5)

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskOutcome:
        raw: dict[str, Any] = pickle.loads(data)  # noqa: S301 - written by our runner into our run's store
        version = int(raw.get("schema", 1))
        if version > SCHEMA_VERSION:
            raise SpecVersionError(
                f"the task's result has schema version {version}, newer than this client's {SCHEMA_VERSION}: "
                "upgrade batchmagic in the notebook"
            )
        error = raw.get("error")
        return cls(
            ok=bool(raw["ok"]),
            phase=str(raw.get("phase", "cell")),
            error=TaskError(error["type"], error["message"], tuple(error.get("traceback", ()))) if error else None,
            outputs=dict(raw.get("outputs", {})),
            skipped=dict(raw.get("skipped", {})),
            deleted=tuple(raw.get("deleted", ())),
            changed=tuple(raw.get("changed", ())),
            random_state=str(raw.get("random_state", "")),
            displays=tuple(raw.get("displays", ())),
            value=bytes(raw.get("value", b"")),
            value_name=str(raw.get("value_name", "")),
            files=tuple((str(path), int(size)) for path, size in raw.get("files", ())),
            unmatched=tuple(raw.get("unmatched", ())),
            written=tuple((str(path), int(size), str(digest)) for path, size, digest in raw.get("written", ())),
            task_id=str(raw.get("task_id", "")),
            started=raw.get("started"),
            ended=raw.get("ended"),
            log_errors=int(raw.get("log_errors", 0)),
            log_tail=bytes(raw.get("log_tail", b"")),
            schema=version,
        )


# --- the task's log ---


class SharedOutputs(dict):  # type: ignore[type-arg]
    """The names a cell bound, pickled as one: ``fig, ax = plt.subplots()`` leaves ``ax.figure is fig`` true in
    the notebook, as the plain cell does (names pickled apart would come back as two figures)."""


#: The metadata key of a single cell's ``execute_result`` whose value travels in its outcome
#: (:attr:`TaskOutcome.value`): the notebook shows it as the cell's ``Out[n]``, not as a display.
VALUE_MARK = "batchmagic_value"

#: The metadata key of a figure the cell left open, displayed by the runner when the cell ended: the notebook
#: shows it after the cell's traceback when the cell raised, as the inline backend does.
LEFT_OPEN_MARK = "batchmagic_left_open"

#: Log record streams on the wire -> their names: the cell's stdout and stderr, the runner's transfer
#: progress (JSON text), and what the cell displayed (an nbformat output object).
STREAMS = {"o": "stdout", "e": "stderr", "p": "progress", "d": "display"}


@dataclass(frozen=True, slots=True)  # slots: a million records are made in half the time
class LogRecord:
    time: float
    stream: str  # "stdout", "stderr", "progress" (the runner's transfers, JSON) or "display"
    text: str  # "" for a display
    task_id: str = ""
    output: dict[str, Any] | None = field(default=None, compare=False)  # a display: its nbformat output object


#: Version of :class:`Progress`. A reader takes any version: it reads the fields it knows.
PROGRESS_VERSION = 1


@dataclass(frozen=True)
class Progress:
    """A progress record: the text of a log record of the ``progress`` stream (runner -> client, JSON).

    ``phase`` says what it is about: ``"inputs"`` (``--input`` downloads: ``done`` bytes of ``total`` so
    far, at ``mb_per_s``; on the wire ``bytes``, ``total``, ``mb_per_s``) or ``"gpu"`` (``gpus``: one
    ``[index, utilization, memory_used, memory_total]`` per GPU, a figure None when the machine did not
    say). Records written before the version existed carry
    no ``v``: they read as version 1.
    """

    phase: str
    done: int = 0
    total: int = 0
    mb_per_s: float = 0.0
    gpus: tuple[tuple[float | None, ...], ...] = ()
    version: int = PROGRESS_VERSION

    @property
    def transfer(self) -> bool:
        """A transfer's progress (what the panel shows as the run's detail), not a GPU sample."""
        return self.phase != "gpu"

    def describe(self) -> str:
        """The panel's line: ``inputs: 120 of 800 MB at 95 MB/s``."""
        return f"{self.phase}: {self.done / 1e6:,.0f} of {self.total / 1e6:,.0f} MB at {self.mb_per_s:,.0f} MB/s"

    def to_json(self) -> str:
        data: dict[str, Any] = {"v": self.version, "phase": self.phase}
        if self.gpus:
            data["gpus"] = [list(g) for g in self.gpus]
        else:
            data.update(bytes=self.done, total=self.total, mb_per_s=self.mb_per_s)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Progress:
        """Read a record of any version (unknown fields ignored); ValueError when it is not one."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or not isinstance(raw.get("phase"), str):
                raise ValueError("not a progress record")
            gpus = tuple(tuple(g) for g in raw.get("gpus") or ())
            return cls(
                phase=raw["phase"],
                done=int(raw.get("bytes", 0)),
                total=int(raw.get("total", 0)),
                mb_per_s=float(raw.get("mb_per_s", 0.0)),
                gpus=gpus,
                version=int(raw.get("v", 1)),
            )
        except (TypeError, KeyError) as err:
            raise ValueError(f"not a progress record: {err}") from None


def encode_log_record(t: float, stream: str, data: str | dict[str, Any]) -> bytes:
    """One log record: a JSON line with the time, the stream code (a key of :data:`STREAMS`) and the
    text, or for ``"d"`` an nbformat output object."""
    return (json.dumps({"t": round(t, 3), "s": stream, "d": data}, ensure_ascii=False) + "\n").encode()


def count_lines(texts: Iterable[str]) -> int:
    """Lines in the concatenation of ``texts``: its newlines, and one more for a last line left open."""
    count, last = 0, ""
    for text in texts:
        if text:
            count, last = count + text.count("\n"), text
    return count + (1 if last and not last.endswith("\n") else 0)


def decode_log_records(data: bytes, task_id: str = "") -> tuple[list[LogRecord], int]:
    """The complete records at the start of ``data``, and how many bytes they took (a partial last
    line is left for the next read). Lines that are not records are skipped."""
    end = data.rfind(b"\n") + 1
    records = []
    for item in _json_lines(data[:end]):
        if not isinstance(item, dict):
            continue
        stream = STREAMS.get(item.get("s", "o"), "stdout")
        payload = item.get("d", "")
        t = float(item.get("t", 0.0))
        if stream == "display":
            if isinstance(payload, dict):
                records.append(LogRecord(t, stream, "", task_id, payload))
            continue
        records.append(LogRecord(t, stream, str(payload), task_id))
    return records, end


def _json_lines(data: bytes) -> list[Any]:
    """The JSON values of complete lines, parsed as one array (one pass of the C parser: a flood of output
    decodes in about a second per million lines), or line by line, skipping what is not JSON, when a
    line spoils the array."""
    if not data:
        return []
    try:
        items = json.loads(b"[" + data[:-1].replace(b"\n", b",") + b"]")
        return items if isinstance(items, list) else []
    except ValueError:
        pass
    out = []
    for line in data.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


# --- the client's ledger ---

#: Version of a ledger line. Raise it when a field changes meaning; a reader skips (and names) a line
#: newer than it understands, and reads a line without ``schema`` as version 1.
LEDGER_VERSION = 1

#: The events a ledger line records; a line of another event (a newer batchmagic's) is ignored.
LEDGER_EVENTS = ("submitted", "finished", "released", "attached")


class LedgerLineError(ValueError):
    """A ledger line that is not an event this side can read: torn, foreign, or from a newer batchmagic."""


@dataclass(frozen=True)
class LedgerSubmission:
    """What another client needs to follow a run (``Run.attach``): the backend's submission, no secret, no URL."""

    vm_size: str = ""
    timeout: float = 0.0
    nodes: int = 1
    low_priority: bool = False
    slots_per_node: int = 1
    image: str = ""
    retries: int = 0
    ledger_id: str = ""
    pool: str = ""
    distributed: bool = False  # its tasks are the ranks of one distributed run
    procs_per_node: int = 1
    master_port: int = 6105  # batchmagic.distributed.DEFAULT_MASTER_PORT


@dataclass(frozen=True)
class LedgerEntry:
    """One event of the ledger, one JSON line: ``submitted`` (with what attach needs, and the client's
    process), ``finished`` (its final ``phase``), ``released`` (what was ``removed``), ``attached``."""

    event: str
    run: str
    client: str = ""
    time: float = 0.0
    # submitted
    backend: str = ""
    name: str = ""
    vm_size: str = ""
    env: dict[str, str] = field(default_factory=dict)  # --env as it may be shown (secret-looking values redacted)
    created: float = 0.0
    sweep: bool = False
    submission: LedgerSubmission = field(default_factory=LedgerSubmission)
    pid: int = 0  # the submitting client's process, its start time (clock ticks) and host: is it alive?
    pid_start: int = 0
    host: str = ""
    # finished
    phase: str = ""
    # released
    removed: tuple[str, ...] = ()
    schema: int = LEDGER_VERSION

    def to_line(self) -> bytes:
        """The entry as one complete line (JSON escapes any newline inside a value)."""
        return (json.dumps(asdict(self), ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_line(cls, line: bytes | str) -> LedgerEntry:
        """Parse one line: fields it does not know are ignored, missing ones take their defaults.

        Raises
        ------
        LedgerLineError
            Not JSON (a torn line), not an object, a field of the wrong type, or a newer version: the
            message says which, in a few words.
        """
        try:
            raw = json.loads(line)
        except ValueError:
            raise LedgerLineError("not JSON (a torn or foreign line)") from None
        if not isinstance(raw, dict):
            raise LedgerLineError(f"a JSON {type(raw).__name__}, not an event")
        version = _field(raw, "schema", int, 1)
        if version > LEDGER_VERSION:
            raise LedgerLineError(f"ledger version {version}, newer than this batchmagic's {LEDGER_VERSION}")
        event, run = _field(raw, "event", str, ""), _field(raw, "run", str, "")
        if not event or not run:
            raise LedgerLineError("no event or no run: not a batchmagic event")
        sub = raw.get("submission") or {}
        if not isinstance(sub, dict):
            raise LedgerLineError("its submission is not an object")
        env, removed = raw.get("env") or {}, raw.get("removed") or []
        if not isinstance(env, dict) or not isinstance(removed, list):
            raise LedgerLineError("its env or removed field has the wrong type")
        return cls(
            event=event,
            run=run,
            client=_field(raw, "client", str, ""),
            time=_field(raw, "time", float, 0.0),
            backend=_field(raw, "backend", str, ""),
            name=_field(raw, "name", str, ""),
            vm_size=_field(raw, "vm_size", str, ""),
            env={str(k): str(v) for k, v in env.items()},
            created=_field(raw, "created", float, 0.0),
            sweep=_field(raw, "sweep", bool, False),
            submission=LedgerSubmission(
                **{
                    f: _field(sub, f, type(getattr(_SUBMISSION_DEFAULTS, f)), getattr(_SUBMISSION_DEFAULTS, f))
                    for f in _SUBMISSION_FIELDS
                }  # fmt: skip
            ),
            pid=_field(raw, "pid", int, 0),
            pid_start=_field(raw, "pid_start", int, 0),
            host=_field(raw, "host", str, ""),
            phase=_field(raw, "phase", str, ""),
            removed=tuple(str(item) for item in removed),
            schema=version,
        )


_SUBMISSION_DEFAULTS = LedgerSubmission()
_SUBMISSION_FIELDS = tuple(LedgerSubmission.__dataclass_fields__)


def _field(raw: dict[str, Any], name: str, kind: type[Any], default: Any) -> Any:
    """``raw[name]`` as ``kind`` (an int is a float too; a bool is not an int), or ``default`` when
    absent or null; a value of another type makes the line unreadable."""
    value = raw.get(name)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise LedgerLineError(f"its {name} is {type(value).__name__}, not {kind.__name__}")
