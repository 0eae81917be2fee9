"""A sweep task's runner forked by its node's warm worker, when the node has one for the task's job.

On Azure Batch each task of a sweep starts ``python3 -P -m batchmagic.runner --spec spec.json`` in a
container of its own: a fresh interpreter that imports the cell's libraries again (about 1.5 s for
scikit-learn). The job's preparation task starts one warm worker per node for the job
(:mod:`batchmagic.runner.nodewarm`, in the training image, from the host: ``docker run -d``), listening on
a Unix socket in the node's shared directory, which every task container sees (Batch mounts the node's
root directory into a task's container at the same path). Before anything heavy is imported,
:func:`fork_on_node` asks that worker to fork the runner: it sends the task's working directory, spec path
and environment, and its own standard streams (``SCM_RIGHTS``: the child writes where a fresh runner
would), says ``go`` when the worker is ready to fork (only in time: a task that gave up waiting never gets
a second runner), then relays the child's exit code. When this process is killed (the task is terminated, its
container removed) the connection closes and the worker kills the child's process group; a SIGTERM is
passed on to the child, so the runner ends as it does on its own (its log flushed, a result written).

When the node has no worker for the job (no socket, no answer, a refusal), :func:`fork_on_node` returns
None and the runner runs fresh in this process, as before: correctness never depends on the worker.

This module imports only the standard library: it runs before the runner is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator, Mapping
from types import FrameType

__all__ = ["SOCKET_DIR", "socket_name", "socket_dir", "container_name", "fork_on_node", "exit_code", "identity"]

#: The folder of the node's shared directory that holds its warm workers' sockets.
SOCKET_DIR = "batchmagic-warm"

#: How long a task waits for the worker's answer (the worker may still import what the cell needs: the
#: wait then replaces the imports a fresh runner would do); past it the runner runs fresh.
ANSWER_TIMEOUT = 60.0


def socket_name(job_id: str) -> str:
    """The socket's file name for ``job_id``: short, so that the path fits a Unix socket's 108 bytes."""
    return "w-" + hashlib.sha256(job_id.encode()).hexdigest()[:16] + ".sock"


def socket_dir(env: Mapping[str, str]) -> str:
    """The folder of the node's worker sockets (in its shared directory), "" outside a Batch task."""
    shared = env.get("AZ_BATCH_NODE_SHARED_DIR", "")
    return os.path.join(shared, SOCKET_DIR) if shared else ""


def container_name(job_id: str) -> str:
    """The worker's container name on a node, ``$AZ_BATCH_NODE_ID`` left for the node's shell to expand:
    one per job and node (nodes that share one engine, as the emulator's do, keep theirs apart)."""
    return f"bm-warm-{job_id}-$AZ_BATCH_NODE_ID"


def identity() -> list[str]:
    """Where this interpreter is: its prefix, its version, and whether it runs in a container. A worker
    forks only for a task whose identity is its own (a worker on the node itself never runs a task meant
    for a container, nor one of another image's interpreter)."""
    return [sys.prefix, sys.version, str(os.path.exists("/.dockerenv"))]


def exit_code(code: int) -> int:
    """A child's exit code as a shell reports it: a signal ``-N`` as ``128 + N``."""
    return 128 - code if code < 0 else code


@contextlib.contextmanager
def _in_dir(path: str) -> Iterator[None]:
    """Work in ``path`` (a socket is reached by its short relative name), then go back."""
    here = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(here)


def _connect(env: Mapping[str, str]) -> socket.socket | None:
    where, job = socket_dir(env), env.get("AZ_BATCH_JOB_ID", "")
    if not where or not job:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _in_dir(where):
            conn.connect(socket_name(job))
    except OSError:  # no worker on this node for this job (or it is gone): the runner runs fresh
        conn.close()
        return None
    return conn


def _read_line(reader: socket.socket, buffer: bytearray) -> dict[str, object] | None:
    """One JSON line from the worker; None when it closed first."""
    while b"\n" not in buffer:
        chunk = reader.recv(4096)
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    answer: dict[str, object] = json.loads(line)
    return answer


def fork_on_node(argv: list[str], env: Mapping[str, str] | None = None) -> int | None:
    """Have the node's warm worker run ``python -m batchmagic.runner ARGV`` for this task; its exit code,
    or None when there is no worker to ask (the caller then runs the runner itself)."""
    env = os.environ if env is None else env
    conn = _connect(env)
    if conn is None:
        return None
    buffer = bytearray()
    try:
        conn.settimeout(ANSWER_TIMEOUT)
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(env), "identity": identity()}
        socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
        answer = _read_line(conn, buffer)
        if answer is not None and answer.get("ready"):
            # In time: this task now takes the worker's runner, whatever comes. Past ANSWER_TIMEOUT it never
            # says go, and the worker, which forks only on go, never runs a second runner for it.
            conn.sendall(b"go\n")
            conn.settimeout(None)
            answer = _read_line(conn, buffer)
    except (OSError, ValueError):
        answer = None
    if answer is None or "pid" not in answer:
        conn.close()
        return None
    conn.settimeout(None)
    return _relay(conn, buffer)


def _relay(conn: socket.socket, buffer: bytearray) -> int:
    """Wait for the forked runner's end; a SIGTERM or SIGINT to this process is passed on to it."""

    def pass_on(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"signal": signum}).encode() + b"\n")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, pass_on)
    try:
        answer = _read_line(conn, buffer)
    except (OSError, ValueError):
        answer = None
    finally:
        conn.close()
    if answer is None or not isinstance(answer.get("exit"), int):
        print("[batchmagic] the node's warm worker ended while it ran this task", file=sys.stderr)
        return 137
    code = answer["exit"]
    assert isinstance(code, int)
    return exit_code(code)
