"""``batchmagic emulator``: an Azure account on this machine, to try the Azure path without one.

It starts Azurite (the Blob Storage emulator, ``azurite-blob`` from npm) and the Batch emulator
(``python -m batchmagic.emulator``) on loopback, writes their settings to ``BATCHMAGIC_HOME/emulator.env``
(mode 0600; the only keys in it are Azurite's published development key and the emulator's local key),
prints the lines to paste, and on Ctrl-C stops both, removing that file and their data.

While it runs, ``%load_ext batchmagic`` loads the file into a kernel whose environment names no
account of its own (none of :data:`OWN_SETTINGS` set), so cells run on the Azure path against the
emulators. Given a command after ``--``, it runs the command with the settings in its environment and
stops both services when the command ends (``make quickstart-azure``).

Examples
--------
::

    $ batchmagic emulator
    Azurite (Blob Storage)  http://127.0.0.1:41231/devstoreaccount1
    Azure Batch emulator    http://127.0.0.1:38415 (account devbatch)
    ...
    $ batchmagic emulator -- jupyter execute notebooks/azure.ipynb
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchmagic.errors import ConfigError
from batchmagic.runner.reap import pid_taken

__all__ = [
    "ENV_FILE",
    "OWN_SETTINGS",
    "Services",
    "adopt_env_file",
    "env_values",
    "find_azurite",
    "parse_env_file",
    "render_env_file",
    "run",
    "start_services",
    "stop_services",
]

#: The file's name in ``BATCHMAGIC_HOME``.
ENV_FILE = "emulator.env"
#: Azurite's account and its published, well-known development key (not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
#: The Batch emulator's account and local key: it serves loopback only and guards nothing of value.
BATCH_ACCOUNT = "devbatch"
BATCH_KEY = base64.b64encode(b"batchmagic-local-emulator-key-01").decode()
#: A training image name for the emulator's process executor, which runs tasks as processes and pulls nothing.
IMAGE = "127.0.0.1:5000/batchmagic/emulator:process"
#: The region the emulated account is in, for the panel's cost (prices of East US).
REGION = "eastus"
#: Variables that mean the environment already says where cells run: the file is then left alone.
OWN_SETTINGS = (
    "AZURE_BATCH_ENDPOINT",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_URL",
    "BATCHMAGIC_BACKEND",
)
_CHECKOUT = Path(__file__).resolve().parents[1]


@dataclass
class Services:
    """Azurite and the Batch emulator, running; what :func:`stop_services` ends."""

    blob_port: int
    batch_port: int
    data_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    env_file: Path | None = None

    @property
    def values(self) -> dict[str, str]:
        """The settings that point batchmagic at these services."""
        return env_values(self.blob_port, self.batch_port)


def env_values(blob_port: int, batch_port: int) -> dict[str, str]:
    """The variables of an Azure setup whose storage is Azurite on ``blob_port`` and Batch account the
    emulator on ``batch_port``."""
    blob = f"http://127.0.0.1:{blob_port}/{AZURITE_ACCOUNT}"
    return {
        "AZURE_BATCH_ENDPOINT": f"http://127.0.0.1:{batch_port}",
        "AZURE_BATCH_ACCOUNT": BATCH_ACCOUNT,
        "AZURE_BATCH_ACCESS_KEY": BATCH_KEY,
        "AZURE_STORAGE_CONNECTION_STRING": (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={blob};"
        ),
        "BATCHMAGIC_IMAGE": IMAGE,
        "BATCHMAGIC_REGION": REGION,
    }


def render_env_file(values: Mapping[str, str], pid: int) -> str:
    """The file's text: shell-sourceable ``export`` lines, and the pid of the command that serves them."""
    lines = [
        "# Written by `batchmagic emulator` (pid below); removed when it stops. `%load_ext batchmagic` loads it",
        "# while that process runs. The keys are Azurite's published dev key and the local emulator's key.",
        f"# pid {pid}",
    ]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def parse_env_file(text: str) -> tuple[dict[str, str], int | None]:
    """``(variables, pid)`` from :func:`render_env_file`'s text; lines it did not write are ignored."""
    values: dict[str, str] = {}
    pid: int | None = None
    for line in text.splitlines():
        if line.startswith("# pid ") and line[6:].strip().isdigit():
            pid = int(line[6:])
        elif line.startswith("export ") and "=" in line:
            name, _, quoted = line[len("export ") :].partition("=")
            words = shlex.split(quoted)
            values[name.strip()] = words[0] if words else ""
    return values, pid


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), replacing it in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)  # whatever the umask or an earlier file said
        handle.write(text)
    partial.replace(path)


def _listening(url: str) -> bool:
    host, _, port = url.removeprefix("http://").split("/")[0].partition(":")
    try:
        with socket.create_connection((host, int(port or 80)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def adopt_env_file(home: Path, environ: Mapping[str, str]) -> dict[str, str] | None:
    """The settings of ``home``'s emulator file to add to ``environ``, or None to leave it be.

    None when there is no file, when ``environ`` already names an account or backend of its own
    (:data:`OWN_SETTINGS`), or when the file is stale (its command ended without removing it, or the
    Batch emulator does not answer).
    """
    path = Path(home) / ENV_FILE
    if any(environ.get(name) for name in OWN_SETTINGS) or not path.is_file():
        return None
    values, pid = parse_env_file(path.read_text(encoding="utf-8"))
    if pid is None or not pid_taken(pid) or not _listening(values.get("AZURE_BATCH_ENDPOINT", "")):
        return None
    return {name: value for name, value in values.items() if not environ.get(name)}


def find_azurite() -> str:
    """The ``azurite-blob`` command: this checkout's ``node_modules``, the working directory's, or PATH.

    Raises
    ------
    ConfigError
        It is nowhere: says how to install it.
    """
    for root in (_CHECKOUT, Path.cwd()):
        candidate = root / "node_modules" / ".bin" / "azurite-blob"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("azurite-blob")
    if found:
        return found
    raise ConfigError(
        "Azurite is not installed: run `npm install` in the batchmagic checkout (or `npm install -g azurite`)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], name: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _listening(f"http://127.0.0.1:{port}"):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:] if log.exists() else ""
            raise ConfigError(f"{name} did not start (see {log}): {tail.strip().splitlines()[-1:] or 'no output'}")
        time.sleep(0.05)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this command ends, even killed with SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: Ctrl-C and SIGTERM still stop both


def _spawn(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    # A session of its own: the terminal's Ctrl-C reaches this command only, which stops the services in
    # order and can end each one's whole process group (the emulator's task processes included). Should
    # this command be killed outright, the parent-death signal still ends them.
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def start_services(data_dir: Path, *, executor: str = "process", allocation_delay: float = 1.0) -> Services:
    """Start Azurite and the Batch emulator on free loopback ports, their data in ``data_dir``.

    Raises
    ------
    ConfigError
        Azurite is not installed, or either service did not start within 30 s (both are stopped).
    """
    azurite = find_azurite()
    services = Services(blob_port=_free_port(), batch_port=_free_port(), data_dir=data_dir)
    (data_dir / "azurite").mkdir(parents=True, exist_ok=True)
    try:
        log = data_dir / "azurite.log"
        services.processes.append(
            _spawn(
                [azurite, "--location", str(data_dir / "azurite"), "--blobHost", "127.0.0.1",
                 "--blobPort", str(services.blob_port), "--disableTelemetry", "--silent", "--skipApiVersionCheck"],
                log,
            )
        )  # fmt: skip
        _wait_listening(services.blob_port, services.processes[-1], "Azurite", log, 30)
        log = data_dir / "batch-emulator.log"
        services.processes.append(
            _spawn(
                [sys.executable, "-m", "batchmagic.emulator", "--host", "127.0.0.1",
                 "--port", str(services.batch_port), "--account", BATCH_ACCOUNT, "--key", BATCH_KEY,
                 "--executor", executor, "--allocation-delay", str(allocation_delay),
                 "--workdir", str(data_dir / "batch")],
                log,
            )
        )  # fmt: skip
        _wait_listening(services.batch_port, services.processes[-1], "the Batch emulator", log, 30)
    except BaseException:
        stop_services(services)
        raise
    return services


def stop_services(services: Services, *, keep_data: bool = False) -> None:
    """Stop both services (the emulator first, then Azurite), remove the settings file and, unless
    ``keep_data``, the services' data. Safe to call twice."""
    for process in reversed(services.processes):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever of its group is left (task processes)
        except ProcessLookupError:
            pass
        process.wait()
    services.processes.clear()
    if services.env_file is not None:
        services.env_file.unlink(missing_ok=True)
    if not keep_data:
        shutil.rmtree(services.data_dir, ignore_errors=True)


def paste_lines(services: Services, env_file: Path) -> list[str]:
    """What the command prints once both services answer."""
    values = services.values
    return [
        f"Azurite (Blob Storage)  http://127.0.0.1:{services.blob_port}/{AZURITE_ACCOUNT}",
        f"Azure Batch emulator    {values['AZURE_BATCH_ENDPOINT']} (account {BATCH_ACCOUNT})",
        f"settings written to {env_file} (mode 600); `%load_ext batchmagic` loads them while this runs,",
        "in a kernel whose environment sets none of " + ", ".join(OWN_SETTINGS) + ".",
        "",
        "For a shell (the Python API, the batchmagic command), paste:",
        *(f"  export {name}={shlex.quote(value)}" for name, value in values.items()),
        f"or: set -a; . {shlex.quote(str(env_file))}; set +a",
        "",
        "Ctrl-C stops both and removes their data.",
    ]


def run(
    env_file: Path,
    command: Sequence[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
    executor: str = "process",
    allocation_delay: float = 1.0,
    keep_data: bool = False,
) -> int:
    """``batchmagic emulator``: start both services, write ``env_file``, then either wait for Ctrl-C
    (SIGINT or SIGTERM) or run ``command`` with the settings in its environment; stop both afterwards.

    ``environ`` is the environment ``command`` runs in, with the services' settings over it.
    Returns the command's exit code (130 without one, once interrupted; 1 when a service stopped by itself).
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    data_dir = Path(tempfile.mkdtemp(prefix="batchmagic-emulator-"))
    try:
        services = start_services(data_dir, executor=executor, allocation_delay=allocation_delay)
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        _restore(previous)
        raise
    try:
        services.env_file = env_file
        _write_private(env_file, render_env_file(services.values, os.getpid()))
        if command:
            return _run_command(command, environ or {}, services, stop)
        for line in paste_lines(services, env_file):
            print(line, flush=True)
        return _wait_for_stop(services, stop)
    finally:
        stop_services(services, keep_data=keep_data)
        if keep_data:
            print(f"their data stays in {data_dir}", file=sys.stderr)
        _restore(previous)


def _restore(previous: Mapping[signal.Signals, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


def _run_command(command: Sequence[str], environ: Mapping[str, str], services: Services, stop: threading.Event) -> int:
    # This command's settings, not the shell's: an account URL or a backend of its own would win over them.
    env = {k: v for k, v in environ.items() if k not in ("AZURE_STORAGE_ACCOUNT_URL", "BATCHMAGIC_BACKEND")}
    env.update(services.values)
    try:
        child = subprocess.Popen(list(command), env=env)
    except OSError as err:
        raise ConfigError(f"cannot run {command[0]}: {err.strerror}") from None
    stopped_at: float | None = None
    while child.poll() is None:
        if not stop.wait(0.2):
            continue
        # Ctrl-C reached the child too (the same terminal) and it is ending; SIGTERM did not: pass it on.
        stopped_at = stopped_at or time.monotonic()
        if time.monotonic() - stopped_at > 5:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    return child.wait()


def _wait_for_stop(services: Services, stop: threading.Event) -> int:
    while not stop.wait(0.5):
        for process, name in zip(services.processes, ("Azurite", "the Batch emulator"), strict=False):
            if process.poll() is not None:
                print(f"batchmagic: {name} stopped by itself (exit {process.returncode}); stopping", file=sys.stderr)
                return 1
    print("stopping the Batch emulator and Azurite", file=sys.stderr)
    return 130
