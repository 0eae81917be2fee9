"""Parsing and checking of settings shared by the API and the magics (no second config system:
the values themselves live in the magics' traits or in keyword arguments)."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from batchmagic.errors import ConfigError

__all__ = [
    "parse_timeout",
    "parse_env",
    "default_home",
    "default_backend",
    "check_home",
    "setting",
    "ENV_SETTINGS",
    "MAX_TIMEOUT",
]

MAX_TIMEOUT = 7 * 24 * 3600  # Azure Batch's longest maxWallClockTime
DEFAULT_TIMEOUT = 24 * 3600
DEFAULT_VM_SIZE = "Standard_D2s_v3"
DEFAULT_BASE_IMAGE = "python:3.11-slim"

#: Settings environment variables seed (the Azure CLI's names where one exists): setting -> (variable,
#: default). The magics' traits and the Python API both read them here. Secrets are not settings: the
#: Batch key, the storage connection string and the registry password are read where they are used.
ENV_SETTINGS: dict[str, tuple[str, str]] = {
    "batch_endpoint": ("AZURE_BATCH_ENDPOINT", ""),
    "batch_account": ("AZURE_BATCH_ACCOUNT", ""),
    "storage_account_url": ("AZURE_STORAGE_ACCOUNT_URL", ""),
    "container": ("BATCHMAGIC_CONTAINER", "batchmagic"),
    "image": ("BATCHMAGIC_IMAGE", ""),
    "registry": ("BATCHMAGIC_REGISTRY", ""),
    "base_image": ("BATCHMAGIC_BASE_IMAGE", DEFAULT_BASE_IMAGE),
}


def setting(name: str) -> str:
    """The value of setting ``name`` from its environment variable, or its default."""
    variable, fallback = ENV_SETTINGS[name]
    return os.environ.get(variable, "") or fallback


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
