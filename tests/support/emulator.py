"""Start the Batch emulator as a subprocess for tests.

Examples
--------
In a test module::

    from tests.support.emulator import emulator_fixture, start_emulator

    emulator = emulator_fixture(allocation_delay=0.2)          # a pytest fixture

    def test_something(emulator):
        client = emulator.client()
        ...

    def test_quota(tmp_path):
        with start_emulator(tmp_path, core_quota=4) as emu:
            ...
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["RunningEmulator", "start_emulator", "emulator_fixture", "TEST_KEY", "free_port"]

#: A throwaway base64 key for the emulator's test account.
TEST_KEY = base64.b64encode(b"batchmagic-tests-shared-key-0001").decode()


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningEmulator:
    """A running emulator subprocess and what a test needs to talk to it."""

    endpoint: str
    account: str
    key: str = field(repr=False)
    record_path: Path
    workdir: Path
    process: subprocess.Popen[str] = field(repr=False)
    output: list[str] = field(default_factory=list, repr=False)

    def requests(self) -> list[dict[str, Any]]:
        """The requests recorded so far (parsed ``--record`` lines)."""
        if not self.record_path.exists():
            return []
        lines = self.record_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def client(self, **kwargs: Any) -> Any:
        """A ``BatchClient`` for the emulator, signed with the account's shared key."""
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential

        return BatchClient(self.endpoint, AzureNamedKeyCredential(self.account, self.key), **kwargs)

    def log(self) -> str:
        """The emulator's own stdout/stderr so far."""
        return "".join(self.output)


@contextmanager
def start_emulator(
    tmp_path: Path | str,
    *,
    account: str = "devbatch",
    key: str = TEST_KEY,
    allocation_delay: float = 0.2,
    core_quota: int | None = None,
    family_quotas: dict[str, int] | None = None,
    executor: str = "process",
    time_scale: float | None = None,
    state_dir: Path | str | None = None,
    port: int | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> Iterator[RunningEmulator]:
    """Run ``python -m batchmagic.emulator`` on a free port until the block ends.

    Parameters
    ----------
    tmp_path : Path or str
        Directory for the record file (``record.jsonl``) and the emulator's workdir.
    allocation_delay, core_quota, executor, account, key
        Passed to the emulator's command line.
    family_quotas : dict, optional
        ``--family-quota FAMILY=CORES`` for each: a dedicated core quota per VM family.
    time_scale : float, optional
        ``--time-scale``: run the emulator's clock this many times faster.
    state_dir : Path or str, optional
        ``--state``: keep the account there, so another emulator started on it carries on.
    extra_args : list of str, optional
        More command-line flags.
    env : dict, optional
        Extra environment variables for the emulator (e.g. ``DOCKER_HOST``).
    timeout : float
        Seconds to wait for the ready line.
    """
    tmp = Path(tmp_path)
    # With --state the node and task files live beside the account, so a restarted emulator serves them.
    workdir = Path(state_dir) / "work" if state_dir is not None else tmp / "emulator"
    record = tmp / "record.jsonl"
    port = port or free_port()  # a restart on the same port: clients keep their endpoint
    argv = [
        sys.executable, "-m", "batchmagic.emulator", "--host", "127.0.0.1", "--port", str(port),
        "--account", account, "--key", key, "--executor", executor,
        "--allocation-delay", str(allocation_delay), "--record", str(record), "--workdir", str(workdir),
        "--log-level", "INFO",
    ]  # fmt: skip
    if core_quota is not None:
        argv += ["--core-quota", str(core_quota)]
    for family, cores in (family_quotas or {}).items():
        argv += ["--family-quota", f"{family}={cores}"]
    if time_scale is not None:
        argv += ["--time-scale", str(time_scale)]
    if state_dir is not None:
        argv += ["--state", str(state_dir)]
    argv += list(extra_args or [])
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    output: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if line.startswith("batch emulator listening on"):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the Batch emulator did not start:\n" + "".join(output))
    emu = RunningEmulator(
        endpoint=f"http://127.0.0.1:{port}",
        account=account,
        key=key,
        record_path=record,
        workdir=workdir,
        process=proc,
        output=output,
    )
    try:
        yield emu
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def emulator_fixture(scope: str = "function", **options: Any) -> Callable[..., Any]:
    """Make a pytest fixture yielding a :class:`RunningEmulator` started with ``options``.

    Examples
    --------
    ``emulator = emulator_fixture(scope="module", allocation_delay=0.2)`` at module level.
    """

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def _emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
        with start_emulator(tmp_path_factory.mktemp("batch-emulator"), **options) as emu:
            yield emu

    return _emulator


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it, or fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)
