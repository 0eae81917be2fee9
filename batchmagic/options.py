"""A run's options: one frozen object, checked once, before anything is uploaded or created.

The magic builds it from its flags, :func:`batchmagic.submit` from its keyword arguments; the session,
the backends and the run only read it. Where the run goes (endpoints, home, registry, defaults) is
:class:`batchmagic.config.Settings`, not an option.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from batchmagic.backends.azure.poolspec import check_pool_name
from batchmagic.backends.azure.vmsizes import check_current, choose_gpu_size, fits, parse_gpu, size_info
from batchmagic.config import Settings, parse_budget, parse_timeout
from batchmagic.distributed import MAX_NODES, MAX_PROCS_PER_NODE
from batchmagic.errors import ConfigError
from batchmagic.package.inputs import InputSpec, parse_input, parse_output
from batchmagic.settings import DEFAULT_MAX_TASKS

__all__ = ["RunOptions", "OPTION_NAMES"]

MAX_SLOTS_PER_NODE = 256  # Batch's taskSlotsPerNode maximum (also at most 4 x the node's cores)
MAX_RETRIES = 100  # Batch accepts more; a task failing 100 times will not succeed the 101st


@dataclass(frozen=True)
class RunOptions:
    """What one ``%%azbatch`` cell (or :func:`batchmagic.submit` call) asks for.

    ``None`` means "the session's setting": ``backend``, ``vm_size`` and ``timeout`` fall back to
    :class:`~batchmagic.config.Settings`. Values arrive as users write them (``timeout="30m"``,
    ``inputs=["az://c/p:data"]``) and are kept normalized (seconds, parsed inputs, tuples).

    Raises
    ------
    ConfigError
        On construction, for any value that cannot work; the message says what to write instead.
    """

    backend: str | None = None
    vm_size: str | None = None
    name: str | None = None
    outputs: tuple[str, ...] | None = None  # names to bring back; None: every name the cell binds
    timeout: float | None = None  # seconds (given as seconds or "30m")
    env: Mapping[str, str] = field(default_factory=dict)
    nodes: int = 1
    low_priority: bool = False
    retries: int = 0
    sweep: tuple[dict[str, Any], ...] | None = None  # one parameter set per task
    slots_per_node: int | None = None  # None: the backend's choice (1 per node on Azure, the cores locally)
    inputs: tuple[InputSpec, ...] = ()
    output_files: tuple[str, ...] = ()  # --output globs
    image: str | None = None
    container: bool = False
    requirements: str | None = None
    pip: tuple[str, ...] = ()
    keep_failed: bool = False  # keep the run's data when it fails before it starts (debugging)
    budget: float | None = None  # end the run once its estimated spend passes this (given as 5 or "$5")
    first_line: int = 1  # the cell's first line's number where it was written: 2 under a %%azbatch line
    pool: str | None = None  # a named pool to run on (Azure); None: the settings' (AzBatch.pool), else an auto pool
    distributed: bool = False  # one cell on ``nodes`` nodes at once (ranks), not a sweep's many cells
    procs_per_node: int = 1  # ranks each node of a distributed run starts (one per GPU)
    gpu: str | None = None  # --gpu KIND[:COUNT]: the cheapest current size with those GPUs (see with_gpu_size)
    folder: str | None = None  # the folder mirrored in the task's working directory; None: this one; "": none

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # normalizing a frozen dataclass's own fields, once
        if self.backend is not None:
            set_(self, "backend", str(self.backend).lower())
        if self.timeout is not None:
            set_(self, "timeout", parse_timeout(self.timeout))
        if self.outputs is not None:
            names = tuple(_names(self.outputs))
            if not names:
                raise ConfigError("--out needs at least one name, like --out model,score")
            for name in names:
                _check_name(name, "--out")
            set_(self, "outputs", names)
        set_(self, "env", dict(self.env or {}))
        for flag, value, least in (("--nodes", self.nodes, 1), ("--retries", self.retries, 0)):
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"{flag} must be {'at least 1' if least else '0 or more'}, not {value!r}")
        if self.slots_per_node is not None and (not isinstance(self.slots_per_node, int) or self.slots_per_node < 1):
            raise ConfigError(f"--slots-per-node must be at least 1, not {self.slots_per_node!r}")
        limits: tuple[tuple[str, int | None, int], ...] = (
            ("--slots-per-node", self.slots_per_node, MAX_SLOTS_PER_NODE),
            ("--retries", self.retries, MAX_RETRIES),
        )
        for flag, given, most in limits:
            if given is not None and given > most:
                raise ConfigError(f"{flag} {given} is over Azure Batch's limit of {most}")
        if self.sweep is not None:
            set_(self, "sweep", tuple(dict(row) for row in self.sweep))
        set_(self, "inputs", tuple(i if isinstance(i, InputSpec) else parse_input(i) for i in self.inputs))
        set_(self, "output_files", tuple(parse_output(p) for p in self.output_files))
        set_(self, "pip", tuple(self.pip))
        if self.requirements is not None:
            set_(self, "requirements", str(self.requirements))
        set_(self, "budget", parse_budget(self.budget))
        if self.pool is not None:
            set_(self, "pool", check_pool_name(str(self.pool).strip(), "--pool") if str(self.pool).strip() else None)
        set_(self, "distributed", bool(self.distributed))
        self._check_distributed()
        self._check_size()

    def _check_distributed(self) -> None:
        """``--distributed`` and its companions: what cannot work with a multi-instance task is one line."""
        k = self.procs_per_node
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_PROCS_PER_NODE:
            raise ConfigError(f"--procs-per-node must be from 1 to {MAX_PROCS_PER_NODE}, not {k!r}")
        if not self.distributed:
            if k != 1:
                raise ConfigError("--procs-per-node starts several ranks of one distributed cell: add --distributed")
            return
        conflicts = (
            (self.sweep is not None, "--distributed runs one cell on several nodes, a sweep many cells: drop one"),
            (
                self.low_priority,
                "--distributed needs dedicated nodes (Azure Batch runs multi-instance tasks on dedicated nodes "
                "only): drop --low-priority",
            ),
            (
                self.slots_per_node is not None,
                "--slots-per-node does not apply to --distributed (its nodes take one task each): use "
                "--procs-per-node K to start K ranks per node",
            ),
            (
                self.retries > 0,
                "--retries does not apply to --distributed (Batch would start every rank again from the beginning, "
                "its nodes' last states still in the store): checkpoint in the cell, and run it again",
            ),
            (
                self.nodes > MAX_NODES,
                f"--nodes {self.nodes} with --distributed is over Azure Batch's limit of {MAX_NODES} nodes for "
                "one multi-instance task: ask for fewer",
            ),
        )
        for wrong, line in conflicts:
            if wrong:
                raise ConfigError(line)

    @property
    def world(self) -> int:
        """Ranks of a distributed run (nodes x processes per node); 0 for any other run."""
        return self.nodes * self.procs_per_node if self.distributed else 0

    def _check_size(self) -> None:
        """``--vm`` not retired; ``--gpu`` well formed and, with ``--vm``, naming the GPUs that size has."""
        if self.vm_size:
            check_current(self.vm_size)
        if not self.gpu:
            object.__setattr__(self, "gpu", None)
            return
        request = parse_gpu(self.gpu)
        object.__setattr__(self, "gpu", str(request))
        if self.vm_size:
            size = size_info(self.vm_size)
            if size is None or not fits(size, request):
                has = size.gpu.describe() if size is not None and size.gpu else "no GPU" if size else "GPUs unknown"
                raise ConfigError(
                    f"--gpu {request} and --vm {self.vm_size} ({has}) disagree: drop --vm to have the cheapest size "
                    f"with {request} chosen, or drop --gpu"
                )

    def with_gpu_size(self, price: Callable[[str], float | None], region: str = "") -> RunOptions:
        """These options with ``vm_size`` set to the size ``--gpu`` chooses (unless ``--vm`` named one);
        ``price(size)`` is its hourly price in ``region`` (spot for ``--low-priority``), None when unknown."""
        if not self.gpu or self.vm_size:
            return self
        size = choose_gpu_size(parse_gpu(self.gpu), price, region=region)
        return RunOptions.build(self, vm_size=size.name)

    def check_limits(self, settings: Settings) -> None:
        """The run's size within the limits: a sweep's tasks (``BATCHMAGIC_MAX_TASKS``), its nodes
        (``BATCHMAGIC_MAX_NODES``)."""
        self.check_sweep(settings.max_tasks)
        if self.nodes > settings.max_nodes:
            raise ConfigError(
                f"--nodes {self.nodes} is over the limit of {settings.max_nodes} nodes a run may ask for: "
                "ask for fewer, or raise BATCHMAGIC_MAX_NODES (and the account's core quota)"
            )

    def check_sweep(self, max_tasks: int = DEFAULT_MAX_TASKS) -> None:
        """A sweep is non-empty and within the task limit (``BATCHMAGIC_MAX_TASKS``)."""
        if self.sweep is None:
            return
        if not self.sweep:
            raise ConfigError("the sweep is empty: give at least one parameter set")
        if len(self.sweep) > max_tasks:
            raise ConfigError(
                f"the sweep has {len(self.sweep):,} tasks, over the limit of {max_tasks:,}: narrow it, "
                "or raise BATCHMAGIC_MAX_TASKS"
            )

    @property
    def provided(self) -> frozenset[str]:
        """Names a sweep binds in every task: the cell may read them without the notebook defining them."""
        return frozenset(key for row in self.sweep or () for key in row)

    @classmethod
    def build(cls, base: RunOptions | None = None, **changes: Any) -> RunOptions:
        """``base`` (or the defaults) with ``changes``; an unknown option is a ConfigError naming it."""
        unknown = sorted(set(changes) - set(OPTION_NAMES))
        if unknown:
            raise ConfigError(f"unknown run option {unknown[0]!r}: the options are {', '.join(OPTION_NAMES)}")
        values = {f.name: getattr(base, f.name) for f in fields(cls)} if base is not None else {}
        values.update(changes)
        return cls(**values)


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RunOptions))


def _names(value: str | Iterable[str]) -> Iterable[str]:
    items = value.split(",") if isinstance(value, str) else value
    return (str(n).strip() for n in items if str(n).strip())


def _check_name(name: str, flag: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigError(f"{flag} {name!r} is not a Python name")


def check_identifier(name: str, flag: str) -> str:
    """``name`` if it can be bound in a notebook (a name, not a keyword); ConfigError naming ``flag`` if not."""
    _check_name(name, flag)
    return name
