"""Every setting declared once: its name, type, environment variable, default and help.

Everything else is derived from :data:`SETTINGS`: :meth:`batchmagic.config.Settings.from_env` reads
the variables through it, the ``AzBatch`` traits (``%config AzBatch.<name>``) and their defaults are
made from it (:mod:`batchmagic.notebook.traits`), and the reference's table of settings
(docs/reference.md) is :func:`reference_table` (``python -m batchmagic.settings --write docs/reference.md``;
a test checks they agree).

Secrets are not settings: the Batch key, the storage connection string and the registry credentials are
read from the environment only (:class:`batchmagic.config.Secrets`), never traits.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from batchmagic.distributed import DEFAULT_MASTER_PORT, DEFAULT_SHM_SIZE
from batchmagic.protocol import DEFAULT_INPUT_CONCURRENCY

__all__ = [
    "Setting",
    "SETTINGS",
    "BY_NAME",
    "KINDS",
    "DEFAULT_VM_SIZE",
    "DEFAULT_BASE_IMAGE",
    "DEFAULT_MAX_TASKS",
    "DEFAULT_MAX_NODES",
    "DEFAULT_LOG_LINES",
    "DEFAULT_SHIP_LIMIT",
    "DEFAULT_BRING_BACK_LIMIT",
    "DEFAULT_STORE_LIMIT",
    "DEFAULT_STORAGE_PATIENCE",
    "reference_table",
    "render_reference",
]

DEFAULT_VM_SIZE = "Standard_D2s_v3"
DEFAULT_BASE_IMAGE = "python:3.11-slim"
DEFAULT_MAX_TASKS = 10_000
DEFAULT_MAX_NODES = 100
DEFAULT_LOG_LINES = 10_000  # AzBatch.log_lines: the most lines of a run's log a cell shows
DEFAULT_SHIP_LIMIT = 200_000_000  # bytes a cell ships from the notebook's folder by naming files
DEFAULT_BRING_BACK_LIMIT = 200_000_000  # bytes of the files a cell wrote that come back by themselves
DEFAULT_STORE_LIMIT = 20_000_000_000  # bytes the local run store keeps before it trims its oldest data
#: Seconds the Blob Storage client backs off over its retries of a request that found no one listening:
#: about 3, 5 and 9 (with jitter).
DEFAULT_STORAGE_PATIENCE = 17.0

#: What a setting's value is: how its variable is read, its trait made, its trait's value checked.
KINDS = {
    "text": "text",
    "backend": "a backend",
    "path": "a directory",
    "duration": "a duration: `90s`, `30m`, `6h`, `2d`",
    "money": "an amount, in the prices' currency",
    "prices": "a JSON file's path, or a dict",
    "count": "a positive whole number",
    "port": "a TCP port",
    "choice": "a word",
    "size": "a size: `200MB`, `1.5GB`, `500k`, or bytes",
}


@dataclass(frozen=True)
class Setting:
    """One setting.

    Attributes
    ----------
    name : str
        The :class:`~batchmagic.config.Settings` field, and the trait (``AzBatch.<name>``) when ``trait``.
    kind : str
        One of :data:`KINDS`.
    variable : str
        The environment variable that seeds it ("" for none).
    default : object
        Its value when neither the trait nor the variable says otherwise, as the trait holds it.
    default_text : str
        The default as the reference says it (Markdown).
    help : str
        A full sentence (or several): the trait's help and the reference's description.
    trait : bool
        A trait of ``AzBatch``; False for the limits only the environment sets.
    in_settings : bool
        A field of :class:`~batchmagic.config.Settings`; False for how the notebook shows runs.
    clears : bool
        A trait set to "" clears the setting, instead of leaving the environment's value.
    choices : tuple of str
        The words a ``choice`` or ``backend`` setting accepts.
    """

    name: str
    kind: str
    variable: str
    default: object
    default_text: str
    help: str
    trait: bool = True
    in_settings: bool = True
    clears: bool = False
    choices: tuple[str, ...] = ()


SETTINGS: tuple[Setting, ...] = (
    Setting("backend", "backend", "BATCHMAGIC_BACKEND", "local",
            "`azure` when `AZURE_BATCH_ENDPOINT` is set, else `local` (with a one-line notice)",
            "Where cells run: 'azure' (Azure Batch) or 'local' (a subprocess on this machine).",
            choices=("local", "azure")),
    Setting("home", "path", "BATCHMAGIC_HOME", "~/.batchmagic", "`~/.batchmagic`",
            "Directory for batchmagic's state, the ledger and local run data."),
    Setting("vm_size", "text", "", DEFAULT_VM_SIZE, f"`{DEFAULT_VM_SIZE}`",
            "Azure VM size used when a cell gives no --vm, e.g. Standard_E32_v3."),
    Setting("timeout", "duration", "", "24h", "`24h`",
            "Longest a run may take when a cell gives no --timeout, like 90s, 30m, 6h (at most 7d)."),
    Setting("batch_endpoint", "text", "AZURE_BATCH_ENDPOINT", "", "none",
            "Azure Batch account endpoint, https://<account>.<region>.batch.azure.com."),
    Setting("batch_account", "text", "AZURE_BATCH_ACCOUNT", "", "none",
            "Azure Batch account name (used with AZURE_BATCH_ACCESS_KEY)."),
    Setting("storage_account_url", "text", "AZURE_STORAGE_ACCOUNT_URL", "", "none",
            "Blob Storage account URL for run data, used with your Entra ID login when "
            "AZURE_STORAGE_CONNECTION_STRING is not set."),
    Setting("container", "text", "BATCHMAGIC_CONTAINER", "batchmagic", "`batchmagic`",
            "Blob container that holds run data."),
    Setting("image", "text", "BATCHMAGIC_IMAGE", "", "none",
            "Training image the task runs in, e.g. myregistry.azurecr.io/batchmagic:env-0123abcd4567."),
    Setting("registry", "text", "BATCHMAGIC_REGISTRY", "", "none",
            "Container registry (and repository) the training image is pushed to and pulled from, e.g. "
            "myregistry.azurecr.io/batchmagic or 127.0.0.1:5000/batchmagic. With a registry and no AzBatch.image, "
            "each cell's image is built (or reused) from its environment."),
    Setting("base_image", "text", "BATCHMAGIC_BASE_IMAGE", DEFAULT_BASE_IMAGE, f"`{DEFAULT_BASE_IMAGE}`",
            "Image the training image is built FROM: any Debian-like image whose Python matches the kernel's."),
    Setting("gpu_base_image", "text", "BATCHMAGIC_GPU_BASE_IMAGE", "",
            "none: NVIDIA's CUDA runtime image for the kernel's Python (see the GPU guide)",
            "Image a GPU run's training image is built FROM (--gpu, an N-series --vm, a local GPU): a CUDA runtime "
            "image with the kernel's Python. Empty: nvidia/cuda's cudnn-runtime image on the Ubuntu that packages "
            "that Python."),
    Setting("pip_extra_index_url", "text", "BATCHMAGIC_PIP_EXTRA_INDEX_URL", "", "none: PyPI only",
            "A package index the training image's pip installs from besides PyPI: your private mirror, or one that "
            "holds builds PyPI has not (e.g. https://pypi.example.com/simple). It is visible in the image's "
            "history, so a URL with a user name or password in it is refused.", clears=True),
    Setting("shm_size", "text", "BATCHMAGIC_SHM_SIZE", DEFAULT_SHM_SIZE, f"`{DEFAULT_SHM_SIZE}`",
            "Size of /dev/shm in the containers of GPU and --distributed runs (docker --shm-size), e.g. 8g: "
            "Docker's 64 MB is too small for NCCL and PyTorch DataLoader workers."),
    Setting("pool", "text", "BATCHMAGIC_POOL", "", "none: each run makes a pool of its own",
            "Named pool cells run on when they give no --pool (see %azbatch_pool); empty: each run makes a pool "
            "of its own.", clears=True),
    Setting("node_image", "text", "BATCHMAGIC_NODE_IMAGE", "",
            "none: the newest Docker-compatible Ubuntu the account supports",
            "VM image of new pools' nodes, as publisher:offer:sku[:version] (e.g. microsoft-dsvm:ubuntu-hpc:2404; "
            "add @<node agent sku> for an image Batch does not list). Empty: the newest Docker-compatible Ubuntu "
            "the Batch account supports, GPU-capable for N-series sizes.", clears=True),
    Setting("input_concurrency", "count", "", DEFAULT_INPUT_CONCURRENCY, f"`{DEFAULT_INPUT_CONCURRENCY}`",
            "Parallel connections each task uses to download its --input data."),
    Setting("budget", "money", "", "", "none",
            "Default --budget: end a run once its estimated spend passes this amount, e.g. '5' "
            "(in the prices' currency, USD unless AzBatch.prices says otherwise). Empty: no budget.", clears=True),
    Setting("prices", "prices", "BATCHMAGIC_PRICES", "", "none: batchmagic's table",
            "Your own VM prices per hour (negotiated rates), over batchmagic's table: a JSON file's path, or a "
            "dict like {'Standard_E32_v3': 1.5, 'westeurope': {'Standard_D2s_v3': {'dedicated': 0.09, "
            "'spot': 0.02}}}."),
    Setting("region", "text", "BATCHMAGIC_REGION", "", "the region in `AZURE_BATCH_ENDPOINT`'s host name",
            "The Batch account's region, for prices (e.g. westeurope)."),
    Setting("master_port", "port", "BATCHMAGIC_MASTER_PORT", DEFAULT_MASTER_PORT, f"`{DEFAULT_MASTER_PORT}`",
            "The port rank 0 of a --distributed run listens on (MASTER_PORT) on Azure Batch; the local backend "
            "picks a free one, as torchrun --standalone does. From 1024 to 65534, not 6000 (Batch keeps it) nor "
            "5999 (each node's supervisor takes the port after rank 0's).", clears=True),
    Setting("ship_limit", "size", "BATCHMAGIC_SHIP_LIMIT", "200MB", "`200MB`",
            "Most a cell ships from the notebook's folder by naming files in it (like pd.read_csv('data/train.csv')); "
            "past it the cell is refused with the --input that ships the data instead (see docs/files.md)."),
    Setting("bring_back_limit", "size", "BATCHMAGIC_BRING_BACK_LIMIT", "200MB", "`200MB`",
            "Most of the files a cell writes in its working directory that come back into the notebook's folder "
            "when it ends; the rest stays in the run's storage (run.download fetches it)."),
    Setting("store_limit", "size", "BATCHMAGIC_STORE_LIMIT", "20GB", "`20GB`",
            "Most the local run store (AzBatch.home: runs' data, --input files, large variables) keeps: after a "
            "run, the oldest data no live run needs goes until it fits; 0: no limit (batchmagic store --prune "
            "frees by hand)."),
    Setting("warm_worker", "choice", "BATCHMAGIC_WARM_WORKER", "on", "`on`",
            "Whether the local backend forks each runner from a warm worker: a process of this kernel's that has "
            "imported what the kernel imported (it costs about as much memory as those imports; it starts with "
            "the first local run and ends with the kernel or %azbatch_teardown), and --container runs' runners "
            "from one in a warm container of the image; on Azure Batch, a sweep's tasks on a node fork from a worker "
            "the job starts on each of its nodes. 'off': every runner is a fresh interpreter (in a container of "
            "its own), a second or more slower to start.", choices=("on", "off")),
    Setting("panel", "choice", "", "auto", "`auto`",
            "How runs are shown: 'widget' (ipywidgets panel), 'text' (a line per phase), 'none', "
            "or 'auto' (the widget where it can render, text otherwise).",
            in_settings=False, choices=("auto", "widget", "text", "none")),
    Setting("log_lines", "count", "", DEFAULT_LOG_LINES, f"`{DEFAULT_LOG_LINES}`",
            "The most lines of a run's log a cell shows: its first ones as they come and, past that, its last "
            "1000 once it ends, with a note (the whole log: _azbatch.logs(), batchmagic logs RUN).",
            in_settings=False),
    Setting("max_tasks", "count", "BATCHMAGIC_MAX_TASKS", DEFAULT_MAX_TASKS, "`10000`",
            "The most tasks a sweep may have.", trait=False),
    Setting("max_nodes", "count", "BATCHMAGIC_MAX_NODES", DEFAULT_MAX_NODES, "`100`",
            "The most --nodes a run may ask for (Batch's API does not tell the account's quota).", trait=False),
    Setting("storage_patience", "duration", "BATCHMAGIC_STORAGE_PATIENCE", "17s", "`17s`",
            "About how long this machine's Blob Storage client backs off over its retries of a request that found "
            "no one listening (3, 5 and 9 s apart, with jitter, at 17s; shorter in proportion), before a read or "
            "write says storage does not answer: then a finished run, batchmagic logs and the panel try again on "
            "their own (see docs/reliability.md).", trait=False),
    Setting("docker_host", "text", "DOCKER_HOST", "", "the engine's default socket",
            "The Docker engine training images are built with (the docker SDK's own variable).", trait=False),
)  # fmt: skip

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

BEGIN = "<!-- settings table: generated by `python -m batchmagic.settings` from batchmagic/settings.py; do not edit -->"
END = "<!-- end of settings table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def _type(setting: Setting) -> str:
    if setting.choices:
        return " or ".join(f"`{c}`" for c in setting.choices)
    return KINDS[setting.kind]


def reference_table() -> str:
    """The reference's table of settings (Markdown), one row per setting, in the table's order."""
    rows = [
        "| setting | type | default | environment variable | what |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        name = f"`AzBatch.{s.name}`" if s.trait else "(environment only)"
        variable = f"`{s.variable}`" if s.variable else ""
        rows.append(f"| {name} | {_type(s)} | {_cell(s.default_text)} | {variable} | {_cell(s.help)} |")
    return "\n".join(rows)


def render_reference(text: str) -> str:
    """``text`` with what lies between the table's markers replaced by :func:`reference_table`."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + reference_table() + "\n" + text[end:]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"] and len(sys.argv) == 3:
        page = Path(sys.argv[2])
        page.write_text(render_reference(page.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(reference_table())
