"""Start Azurite (the Azure Blob Storage emulator, npm package `azurite`) for tests.

The binary comes from the repository's node_modules (`make test` runs `npm install`). A test that
needs it fails with a clear message when it is missing: never a silent skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["RunningAzurite", "start_azurite", "azurite_fixture", "ACCOUNT", "KEY"]

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "devstoreaccount1"
#: Azurite's published well-known development key (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class RunningAzurite:
    port: int
    location: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={self.account_url};"

    def service(self):  # type: ignore[no-untyped-def]
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def blob_names(self, container: str, prefix: str = "") -> list[str]:
        client = self.service().get_container_client(container)
        if not client.exists():
            return []
        return [b.name for b in client.list_blobs(name_starts_with=prefix)]


def azurite_binary() -> str:
    local = ROOT / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    pytest.fail("azurite-blob not found: run `npm install` in the repository (make test does it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def start_azurite(location: Path, port: int | None = None) -> Iterator[RunningAzurite]:
    """Azurite on ``port`` (default: a free one), keeping its data in ``location`` (a restart on the same
    port and location carries on where the last one stopped)."""
    location.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    process = subprocess.Popen(
        [
            azurite_binary(),
            "--location", str(location),
            "--blobHost", "127.0.0.1",
            "--blobPort", str(port),
            "--disableTelemetry",
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"azurite exited: {process.stderr.read().decode() if process.stderr else ''}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("azurite did not start within 30 s") from None
                time.sleep(0.1)
        yield RunningAzurite(port, location, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def azurite_fixture(scope: str = "session"):  # type: ignore[no-untyped-def]
    """The session's one Azurite (``azurite_session`` in tests/conftest.py) under the name ``azurite``.

    Test modules need not call this: conftest's ``azurite`` fixture is the same instance. Each test keeps
    to a container (or prefix) of its own, so sharing one Azurite keeps them independent; a test that
    stops or restarts Azurite on purpose starts its own with :func:`start_azurite`.
    """

    @pytest.fixture(scope=scope, name="azurite")
    def _azurite(azurite_session: RunningAzurite) -> RunningAzurite:
        return azurite_session

    return _azurite
