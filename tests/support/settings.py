"""The environment a user exports before starting Jupyter, pointed at the tests' real parts.

One place for it: the scenario tests, the notebook tests and the benchmarks all use the Batch
emulator and Azurite through the same variables a real account would set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["IMAGE", "azure_environment", "azure_environ", "azure_session_fixture", "use_azure", "use_azure_images"]

#: A training image name for runs on the process executor (which does not pull it).
IMAGE = "127.0.0.1:5000/batchmagic/train:env-test"

#: Settings of the machine the tests run on that must not leak into them.
_UNSET = (
    "AZURE_STORAGE_ACCOUNT_URL",
    "BATCHMAGIC_REGISTRY",
    "BATCHMAGIC_REGISTRY_USERNAME",
    "BATCHMAGIC_REGISTRY_PASSWORD",
)


def azure_environment(emulator: Any, azurite: Any, *, container: str, image: str = IMAGE) -> dict[str, str]:
    """The variables of an Azure setup whose Batch account is ``emulator`` and storage ``azurite``."""
    return {
        "AZURE_BATCH_ENDPOINT": emulator.endpoint,
        "AZURE_BATCH_ACCOUNT": emulator.account,
        "AZURE_BATCH_ACCESS_KEY": emulator.key,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "BATCHMAGIC_CONTAINER": container,
        "BATCHMAGIC_IMAGE": image,
    }


def use_azure(monkeypatch: Any, emulator: Any, azurite: Any, *, prefix: str, image: str = IMAGE) -> str:
    """Export that setup for the test (and the kernels it starts), in a fresh container; return its name."""
    container = f"{prefix}-{uuid.uuid4().hex[:8]}"
    for name in _UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in azure_environment(emulator, azurite, container=container, image=image).items():
        monkeypatch.setenv(name, value)
    return container


def use_azure_images(
    monkeypatch: Any, emulator: Any, azurite: Any, *, prefix: str, engine: Any, registry: Any, base_image: str
) -> str:
    """Export that setup for an emulator on the docker executor: no fixed image, so each cell's training image
    is built from ``base_image`` by the Docker ``engine`` and pushed to ``registry`` (with its credentials);
    return the storage container's name."""
    container = use_azure(monkeypatch, emulator, azurite, prefix=prefix)
    monkeypatch.delenv("BATCHMAGIC_IMAGE")
    monkeypatch.setenv("DOCKER_HOST", engine.host)
    monkeypatch.setenv("BATCHMAGIC_REGISTRY", f"{registry.host}/batchmagic")
    monkeypatch.setenv("BATCHMAGIC_BASE_IMAGE", base_image)
    monkeypatch.setenv("BATCHMAGIC_REGISTRY_USERNAME", registry.username)
    monkeypatch.setenv("BATCHMAGIC_REGISTRY_PASSWORD", registry.password)
    return container


@contextmanager
def azure_environ(emulator: Any, azurite: Any, *, container: str, home: Path) -> Iterator[None]:
    """The same setup in ``os.environ`` for a whole process (the benchmarks), restored afterwards:
    ``python -m bench`` runs several benchmarks in one process."""
    saved = dict(os.environ)
    for name in _UNSET:
        os.environ.pop(name, None)
    os.environ.update(azure_environment(emulator, azurite, container=container), BATCHMAGIC_HOME=str(home))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def azure_session_fixture(prefix: str) -> Any:
    """A pytest fixture: a fresh Batch emulator and the session's Azurite exported for the test (see
    :func:`use_azure`), yielding ``(Session, emulator)``; the session is torn down afterwards. The test
    module provides the ``azurite`` fixture (``azurite_fixture()``)."""
    import pytest

    from batchmagic.api import Session
    from tests.support.emulator import start_emulator

    @pytest.fixture
    def _azure_session(tmp_path: Path, monkeypatch: Any, home: Path, azurite: Any) -> Iterator[tuple[Any, Any]]:
        with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
            use_azure(monkeypatch, emu, azurite, prefix=prefix)
            session = Session()
            yield session, emu
            session.teardown()

    return _azure_session
