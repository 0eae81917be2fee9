"""Settings, resolved once into one object: from the magics' traits in a notebook, from the
environment for API use. This is the only module that reads ``os.environ``; everything else is
handed a :class:`Settings` (and the stores and credentials built from it). Which settings there are,
their variables and defaults, is declared once in :mod:`batchmagic.settings`.

Also the parsing and checking of values shared by the API and the magics (durations, ``--env``).
"""

from __future__ import annotations

import getpass
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from batchmagic.distributed import DEFAULT_MASTER_PORT, DEFAULT_SHM_SIZE
from batchmagic.errors import ConfigError
from batchmagic.protocol import DEFAULT_INPUT_CONCURRENCY
from batchmagic.settings import (
    DEFAULT_BASE_IMAGE,
    DEFAULT_BRING_BACK_LIMIT,
    DEFAULT_MAX_NODES,
    DEFAULT_MAX_TASKS,
    DEFAULT_SHIP_LIMIT,
    DEFAULT_STORAGE_PATIENCE,
    DEFAULT_STORE_LIMIT,
    DEFAULT_VM_SIZE,
    SETTINGS,
    Setting,
)

__all__ = [
    "Settings",
    "Secrets",
    "docker_host",
    "parse_timeout",
    "parse_duration",
    "parse_env",
    "parse_budget",
    "parse_size",
    "default_home",
    "default_backend",
    "check_home",
    "MAX_TIMEOUT",
    "working_directory",
    "redacted",
    "SECRET_NAME",
    "check_port",
    "adopt_emulator_settings",
    "environment",
]

MAX_TIMEOUT = 7 * 24 * 3600  # Azure Batch's longest maxWallClockTime
DEFAULT_TIMEOUT = 24 * 3600


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TIMEOUT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_timeout(text: str | float | int) -> float:
    """``"90s"``, ``"30m"``, ``"6h"``, ``"2d"`` or a number of seconds -> seconds.

    Raises
    ------
    ConfigError
        Not of that form, zero, or over Azure Batch's 7-day maximum.
    """
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _TIMEOUT.match(text)
        if not match:
            raise ConfigError(f"--timeout {text!r} is not a duration: write it like 90s, 30m, 6h or 2d")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ConfigError(f"--timeout must be more than zero, not {text!r}")
    if seconds > MAX_TIMEOUT:
        raise ConfigError(f"--timeout {text} is over the 7-day maximum of Azure Batch: use at most 7d")
    return seconds


_MONEY = re.compile(r"^\s*\$?\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:USD)?\s*$", re.IGNORECASE)


def parse_budget(text: str | float | int | None) -> float | None:
    """``"5"``, ``"$5"``, ``"12.50"`` or a number -> the amount (the prices' currency); None for none.

    Raises
    ------
    ConfigError
        Not an amount, or not more than zero.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, int | float) and not isinstance(text, bool):
        amount = float(text)
    else:
        match = _MONEY.match(str(text))
        if not match:
            raise ConfigError(f"--budget {text!r} is not an amount: write it like 5 or 12.50 (in the prices' currency)")
        amount = float(match.group(1))
    if amount <= 0:
        raise ConfigError(f"--budget must be more than zero, not {text!r}")
    return amount


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str | int, name: str) -> int:
    """``"200MB"``, ``"1.5GB"``, ``"500k"`` or a number of bytes -> bytes, for the setting ``name``.

    Raises
    ------
    ConfigError
        Not a size; the message names the setting.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise ConfigError(f"{name} {text!r} is not a size: write it like 200MB, 1.5GB or 0 (in bytes)")
        value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more, not {text!r}")
    return value


def parse_duration(text: str | float | int, flag: str) -> float:
    """``"90s"``, ``"30m"``, ``"6h"``, ``"2d"`` or a number of seconds -> seconds, for ``flag`` (``--idle``).

    Raises
    ------
    ConfigError
        Not of that form, or not more than zero; the message names ``flag``.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _TIMEOUT.match(str(text))
        if not match:
            raise ConfigError(f"{flag} {text!r} is not a duration: write it like 90s, 20m, 6h or 2d")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ConfigError(f"{flag} must be more than zero, not {text!r}")
    return seconds


def parse_env(items: list[str] | None) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> dict; a malformed item raises ConfigError naming it."""
    env: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise ConfigError(f"--env {item!r} is not KEY=VALUE (KEY: letters, digits, _; not starting with a digit)")
        env[key] = value
    return env


def default_home() -> Path:
    return Path(os.environ.get("BATCHMAGIC_HOME") or Path.home() / ".batchmagic").expanduser()


def default_backend() -> str:
    explicit = os.environ.get("BATCHMAGIC_BACKEND", "").strip().lower()
    if explicit:
        return explicit
    return "azure" if os.environ.get("AZURE_BATCH_ENDPOINT") else "local"


#: Bytes BATCHMAGIC_HOME must have free before a run uploads anything: its ledger lines, its record and
#: caches (a local run's data is checked as it is stored).
HOME_ROOM = 256 * 1024


def check_room(home: Path, need: int = HOME_ROOM) -> None:
    """Make sure ``home`` has room for a run's local bookkeeping before anything is uploaded.

    Raises
    ------
    ConfigError
        Less than ``need`` bytes free: one line that says what to do.
    """
    home = Path(home).expanduser()
    try:
        stat = os.statvfs(home)
    except OSError:
        return  # cannot tell: the writes themselves will say
    free = stat.f_bavail * stat.f_frsize
    if free < need:
        raise ConfigError(
            f"BATCHMAGIC_HOME {home} is full ({free // 1024} KB free, a run needs {need // 1024} KB for its "
            "ledger and record): free some space (batchmagic store --prune), or point AzBatch.home elsewhere"
        )


def check_home(home: Path) -> Path:
    """Create ``home`` if needed and make sure it is writable; ConfigError says what to do if not."""
    home = Path(home).expanduser()
    probe = home / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"BATCHMAGIC_HOME {home} is not writable ({err.strerror}): "
            "point it at a directory you can write, e.g. %config AzBatch.home = '/tmp/batchmagic'"
        ) from err
    return home


@dataclass(frozen=True)
class Secrets:
    """What authenticates this client, read from the environment only (never traits, never logged:
    the repr shows which are set, not their values)."""

    batch_key: str = field(default="", repr=False)
    storage_connection_string: str = field(default="", repr=False)
    registry_username: str = field(default="", repr=False)
    registry_password: str = field(default="", repr=False)

    @classmethod
    def from_env(cls) -> Secrets:
        return cls(
            batch_key=os.environ.get("AZURE_BATCH_ACCESS_KEY", ""),
            storage_connection_string=os.environ.get("AZURE_STORAGE_CONNECTION_STRING", ""),
            registry_username=os.environ.get("BATCHMAGIC_REGISTRY_USERNAME", ""),
            registry_password=os.environ.get("BATCHMAGIC_REGISTRY_PASSWORD", ""),
        )

    def __repr__(self) -> str:
        shown = ", ".join(f.name for f in fields(self) if getattr(self, f.name))
        return f"Secrets(set: {shown or 'none'})"


@dataclass(frozen=True)
class Settings:
    """Everything a session needs to know about where runs go, resolved once.

    Built by :meth:`from_env` (the Python API, the command line) or by the magics from their traits
    (which the same environment variables seed). Per-run choices are :class:`batchmagic.options.RunOptions`.
    """

    backend: str = "local"
    backend_chosen: bool = False  # the backend was chosen (BATCHMAGIC_BACKEND, a trait), not defaulted
    home: Path = field(default_factory=lambda: Path.home() / ".batchmagic")
    vm_size: str = DEFAULT_VM_SIZE
    timeout: float = DEFAULT_TIMEOUT
    batch_endpoint: str = ""
    batch_account: str = ""
    storage_account_url: str = ""
    container: str = "batchmagic"
    image: str = ""
    registry: str = ""
    base_image: str = DEFAULT_BASE_IMAGE
    pool: str = ""  # the named pool runs go to (AzBatch.pool); empty: an auto pool per run
    node_image: str = ""  # publisher:offer:sku[:version] overriding the chosen node image
    pip_extra_index_url: str = ""  # an index the image's pip uses besides PyPI (a private mirror)
    gpu_base_image: str = ""  # what a GPU run's image is built FROM; "": a CUDA runtime image for the kernel's Python
    shm_size: str = DEFAULT_SHM_SIZE  # /dev/shm of GPU and distributed runs' containers (docker's --shm-size)
    user: str = ""  # who this client runs as: a named pool's creator
    input_concurrency: int = DEFAULT_INPUT_CONCURRENCY
    max_tasks: int = DEFAULT_MAX_TASKS
    max_nodes: int = DEFAULT_MAX_NODES
    storage_patience: float = DEFAULT_STORAGE_PATIENCE  # seconds the Blob Storage client backs off over a request
    docker_host: str = ""
    region: str = ""  # the Batch account's region, for prices; "" -> from the endpoint's host name
    # AzBatch.prices: a prices file's path, or the prices as JSON text (see batchmagic.backends.azure.prices)
    prices: str = ""
    budget: float | None = None  # AzBatch.budget: the default --budget
    master_port: int = DEFAULT_MASTER_PORT  # AzBatch.master_port: rank 0's port in a distributed run (Azure)
    ship_limit: int = DEFAULT_SHIP_LIMIT  # AzBatch.ship_limit: bytes a cell ships by naming files in the folder
    bring_back_limit: int = DEFAULT_BRING_BACK_LIMIT  # AzBatch.bring_back_limit: bytes of written files that return
    store_limit: int = DEFAULT_STORE_LIMIT  # AzBatch.store_limit: the local store is trimmed to it after a run
    warm_worker: str = "on"  # AzBatch.warm_worker: local runners forked from a warm worker ("on") or fresh ("off")
    secrets: Secrets = field(default_factory=Secrets)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """The settings the environment gives (the Azure CLI's names where one exists), with
        ``overrides`` (empty values ignored) on top.

        Raises
        ------
        ConfigError
            A variable's value is not of its setting's kind (``BATCHMAGIC_MAX_TASKS=lots``).
        """
        values: dict[str, Any] = {s.name: _from_variable(s) for s in SETTINGS if s.variable and s.in_settings}
        values.update(
            backend_chosen=bool(os.environ.get("BATCHMAGIC_BACKEND", "").strip()),
            user=current_user(),
            secrets=Secrets.from_env(),
        )
        return cls(**values).with_overrides(**overrides)

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given values (``None`` and ``""`` leave a setting as it is)."""
        given = {k: v for k, v in overrides.items() if v is not None and v != ""}
        if "home" in given:
            given["home"] = Path(given["home"]).expanduser()
        if "backend" in given:
            given["backend"] = str(given["backend"]).lower()
        return replace(self, **given) if given else self

    @property
    def batch_region(self) -> str:
        """The region prices are looked up in: ``region``, else the endpoint's (``<account>.<region>.batch...``)."""
        from batchmagic.backends.azure.prices import region_from_endpoint

        return (self.region or region_from_endpoint(self.batch_endpoint)).lower()

    def with_values(self, **values: Any) -> Settings:
        """A copy with exactly these values, empty ones included (a trait set to "" clears its setting)."""
        return replace(self, **values)


#: Names of variables that hold secrets: never inherited by a local task, redacted wherever shown.
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|PASSWD|TOKEN|SAS|CONNECTION_STRING|CREDENTIAL", re.IGNORECASE)
REDACTED = "<redacted>"


def redacted(env: Mapping[str, str]) -> dict[str, str]:
    """``--env`` as it may be shown (panel, ledger, status): values of secret-looking names replaced."""
    return {k: REDACTED if SECRET_NAME.search(k) else v for k, v in env.items()}


#: Batch keeps this port on every node of a multi-instance task (``AZ_BATCH_MASTER_NODE`` names it).
BATCH_PORT = 6000


def check_port(port: int, name: str) -> int:
    """``port`` if a distributed run's rank 0 can listen on it and each node's supervisor on the one after
    (:func:`batchmagic.runner.ranks.main` binds ``port + 1`` to claim its node rank): both 1024-65535, neither
    Batch's own 6000. So 1024-65534 without 5999 and 6000."""
    if not 1024 <= port <= 65534 or BATCH_PORT in (port, port + 1):
        raise ConfigError(
            f"{name} {port} cannot be rank 0's port: pick one from 1024 to 65534 other than 5999 and 6000 "
            f"(Batch keeps 6000, and each node's supervisor takes the port after rank 0's)"
        )
    return port


def _from_variable(setting: Setting) -> Any:
    """The value of ``setting`` its environment variable gives, or its default."""
    if setting.kind == "backend":
        return default_backend()
    if setting.kind == "path":
        return default_home()
    if setting.kind == "count":
        return _positive(setting.variable, int(str(setting.default)))
    if setting.kind == "duration":
        raw = os.environ.get(setting.variable, "").strip() or str(setting.default)
        try:
            return parse_timeout(raw)
        except ConfigError:
            raise ConfigError(f"{setting.variable}={raw!r} is not a duration: write it like 20s or 2m") from None
    if setting.kind == "port":
        return check_port(_positive(setting.variable, int(str(setting.default))), setting.variable)
    if setting.kind == "size":
        return parse_size(os.environ.get(setting.variable, "") or str(setting.default), setting.variable)
    if setting.kind == "choice":
        value = os.environ.get(setting.variable, "").strip().lower() or str(setting.default)
        if value not in setting.choices:
            raise ConfigError(f"{setting.variable}={value!r} is not one of: {', '.join(setting.choices)}")
        return value
    return os.environ.get(setting.variable, "") or setting.default


def _positive(variable: str, default: int) -> int:
    raw = os.environ.get(variable, "") or str(default)
    try:
        value = int(raw)
        if value < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{variable}={raw!r} is not a positive integer") from None
    return value


def working_directory() -> Path:
    """The process's working directory; ConfigError when it was deleted under the kernel."""
    try:
        return Path(os.getcwd())
    except FileNotFoundError:
        where = os.environ.get("PWD", "")
        raise ConfigError(
            f"the working directory{' ' + where if where else ''} was deleted: %cd to one that exists, "
            "then run the cell again"
        ) from None


def inherited_environment(secret: re.Pattern[str]) -> dict[str, str]:
    """This process's environment without the variables whose names match ``secret`` and without
    ``PYTHONPATH``: what a local task inherits."""
    return {k: v for k, v in os.environ.items() if not secret.search(k) and k != "PYTHONPATH"}


def current_user() -> str:
    """Who runs this client (a named pool's ``creator``): the login name, else empty."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def docker_host() -> str:
    """``DOCKER_HOST``, only to name the engine in an error (the docker SDK reads it itself)."""
    return os.environ.get("DOCKER_HOST", "")


def environment() -> dict[str, str]:
    """A copy of this process's environment: what a command ``batchmagic emulator`` runs starts from."""
    return dict(os.environ)


def adopt_emulator_settings(home: Path | None = None) -> dict[str, str]:
    """Load the settings ``batchmagic emulator`` wrote (``BATCHMAGIC_HOME/emulator.env``) into this
    process's environment, when it names no account or backend of its own and that command still runs;
    return what was added (empty: nothing). See :mod:`batchmagic.sandbox`."""
    from batchmagic.sandbox import adopt_env_file

    values = adopt_env_file(home or default_home(), os.environ) or {}
    os.environ.update(values)
    return values
