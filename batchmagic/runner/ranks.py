"""A distributed run's node supervisor: ``python -m batchmagic.runner.ranks --group group.json``.

On Azure Batch a distributed run is one multi-instance task. Its application command runs on the
primary node only, after every node's coordination command has ended, and Batch kills the subtasks when
it exits. So every node's ranks are started by its coordination command (which must exit 0): with
``--coordinate DIR`` this supervisor starts the node's ranks, writes the node's state, returns 0 and goes on
watching in the background. The ranks of all the nodes start at once (no node waits for another's
interpreter). The primary's application command (a shell loop, see
:mod:`batchmagic.backends.azure.ranks`) tells the primary's supervisor it may read the other nodes' states
now (``DIR/go``: they are all this attempt's) and ends with its verdict (``DIR/code``). Without
``--coordinate`` (the local test of a node) it runs in the foreground. Each supervisor:

1. finds its node rank: 0 on the primary (``AZ_BATCH_IS_CURRENT_NODE_MASTER``, whose address is the host
   of ``AZ_BATCH_MASTER_NODE``); elsewhere the index, in ``AZ_BATCH_HOST_LIST`` with the primary's address
   moved to the front (Batch does not promise the primary is listed first), of the first address it can
   bind (on a pool, only its own: the same order on every node). The bound socket is kept, so two nodes
   never take the same rank (on an emulator whose nodes share one machine's loopback addresses, the
   first to bind an address takes it);
2. starts its ``procs_per_node`` ranks, each ``python -m batchmagic.runner --spec <its spec URL>`` (a fork
   of the supervisor, whose imports are done) with
   the variables of :mod:`batchmagic.distributed`, ``MASTER_ADDR`` being the host part of
   ``AZ_BATCH_MASTER_NODE`` (its port is Batch's own);
3. writes its :class:`~batchmagic.protocol.NodeState` (which ranks run, which ended and how) to the run's
   store at every change and at least every :data:`~batchmagic.protocol.HEARTBEAT` seconds while its ranks
   run (its ``beat``), and watches: a rank of its own that fails, or (read from the primary's state) one that
   failed anywhere, ends its other ranks at once instead of leaving them in a collective until PyTorch's
   30-minute timeout. The primary reads every node's state and exits non-zero, naming the rank, within
   seconds of a failure, and names a node whose beat stood still :data:`~batchmagic.protocol.SILENT`
   seconds on its own clock (hung, or lost: ``NodeState.lost``); it exits 0 once every rank of every node
   has ended well.

Standard library only, as the rest of the runner.
"""

from __future__ import annotations

import errno
import http.client
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from batchmagic.channel import open_channel
from batchmagic.distributed import rank_environment, thread_budget
from batchmagic.protocol import HEARTBEAT, SILENT, NodeState, RankGroup, RankState, TaskSpec

__all__ = ["main", "claim_node", "node_order", "parse_args"]

POLL = 0.5  # seconds between looks at the ranks and the states
GRACE = 3.0  # seconds a stopped rank has to write its result before SIGKILL
#: Seconds the primary waits for every node's supervisor to start its ranks (the coordination commands
#: have all exited by the time the primary starts: a supervisor not up by then is not coming).
START_TIMEOUT = 120.0
PUBLISH_PATIENCE = 60.0  # seconds a node keeps trying to write its first state through a storage outage
#: How much earlier than a node's own supervisor this attempt's primary may have started (seconds): the
#: nodes' coordination commands start together, on clocks kept in step; a requeued attempt is minutes apart.
ATTEMPT_SKEW = 30.0
EXIT_RANK_FAILED = 1
#: What a read or write of the store may raise: the network's errors, and http.client's own for a
#: connection that broke mid-answer (not OSErrors: uncaught, they would kill the supervisor).
STORAGE_ERRORS = (OSError, http.client.HTTPException)
#: Seconds a node tries again to claim an address in use (the previous task's supervisor, not yet gone).
CLAIM_PATIENCE = 10.0


def node_order(hosts: list[str], master: str) -> list[str]:
    """The nodes' addresses in node-rank order: the primary's (``master``) first, then the others in the
    order of ``AZ_BATCH_HOST_LIST``, which is the same on every node."""
    return [master, *(host for host in hosts if host != master)] if master in hosts else hosts


def claim_node(
    hosts: list[str], primary: bool, port: int, *, patience: float = CLAIM_PATIENCE
) -> tuple[int, socket.socket | None]:
    """This node's rank and the socket that holds it (see the module's docstring); ``hosts`` in the order
    :func:`node_order` gives. An address in use may be held by the previous task's supervisor, killed with
    its task a moment ago and not yet gone (the next task on these nodes starts at once): tried again for
    up to ``patience`` seconds, rather than failing the run (seen on the emulator, back-to-back runs)."""
    if primary:
        return 0, _bind(hosts[0], port)[0]
    deadline = time.monotonic() + patience
    while True:
        busy = False
        for index, host in enumerate(hosts[1:], start=1):
            held, in_use = _bind(host, port)
            if held is not None:
                return index, held
            busy = busy or in_use
        if not busy or time.monotonic() > deadline:
            raise SystemExit(
                f"batchmagic: this node has none of the addresses of AZ_BATCH_HOST_LIST ({','.join(hosts)})"
                + (" free (each in use)" if busy else "")
            )
        time.sleep(0.05)


def _bind(host: str, port: int) -> tuple[socket.socket | None, bool]:
    """A socket bound to ``host:port``, or None and whether the address was in use (not merely not ours)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        return None, err.errno == errno.EADDRINUSE
    return sock, False


class _Forked:
    """A rank forked from the supervisor, with the part of ``Popen``'s interface the supervisor uses (but
    :meth:`wait` returns None at its timeout: the supervisor does without importing subprocess)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)  # -9: killed by SIGKILL, as Popen says
        return self.returncode

    def _signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        """The rank's exit code once it has ended; None if it still runs after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        return code


class NodeFetch:
    """What every rank of a node reads before its cell, read once for the node, in a thread: the ranks'
    specs and the run's bundle (one file on the node's disk, where each rank read its own copy before). The
    supervisor imports the runner meanwhile, so on a pool these round trips to storage overlap that work.
    Whatever could not be read is left to each rank, which reads it as before and says what failed."""

    def __init__(self, specs: list[str], workdir: Path) -> None:
        self.specs: dict[str, bytes] = {}
        self.bundles: dict[str, Path] = {}
        self._thread = threading.Thread(target=self._read, args=(specs, workdir), name="node-fetch", daemon=True)
        self._thread.start()

    def _read(self, specs: list[str], workdir: Path) -> None:
        try:
            for url in specs:
                if "://" in url:
                    self.specs[url] = open_channel(url).read()
            wanted = sorted({TaskSpec.from_json(raw).bundle for raw in self.specs.values()})
            for i, url in enumerate(wanted):
                channel = open_channel(url)
                if channel.local_path() is None:  # a store on this machine is read where it is
                    path = _node_dir(workdir) / f".azbatch-bundle-{i}.zip"
                    channel.download_to(path)
                    self.bundles[url] = path
        except Exception as err:  # noqa: BLE001 - each rank reads what is missing itself, and says why
            print(f"batchmagic: the node could not read its ranks' spec or bundle once for all: {err}", file=sys.stderr)

    def done(self) -> NodeFetch:
        """Wait for the reads (before the supervisor forks: no thread may run across a fork)."""
        self._thread.join()
        return self

    def bundle_of(self, raw: bytes | None) -> Path | None:
        if raw is None:
            return None
        try:
            return self.bundles.get(TaskSpec.from_json(raw).bundle)
        except Exception:  # noqa: BLE001 - the rank refuses the spec itself, in its own words
            return None


def _node_dir(workdir: Path) -> Path:
    """Where the node keeps what its ranks share: the task's working directory, or the temp dir when the
    process cannot write it (the service makes it the task's user's, the user the container runs as)."""
    return workdir if os.access(workdir, os.W_OK) else Path(tempfile.mkdtemp(prefix="azbatch-node-"))


def _fork_runner(spec: str, cwd: Path, env: dict[str, str], fetched: NodeFetch | None = None) -> _Forked:
    """Run ``python -m batchmagic.runner --spec SPEC`` as a fork of this process: the interpreter and the
    runner's imports are ready, so a node's ranks start without paying for them each (on a busy node that
    is most of a rank's start), with what the node read for them (``fetched``). In the supervisor's process
    group: whatever ends the task ends them too."""
    from batchmagic.runner.main import run_task

    raw = fetched.specs.get(spec) if fetched is not None else None
    bundle = fetched.bundle_of(raw) if fetched is not None else None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return _Forked(pid)
    code = 2
    try:
        os.chdir(cwd)
        os.environ.update(env)
        code = run_task(spec, raw_spec=raw, bundle_copy=bundle)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 2
    except BaseException:  # the runner writes its own result; this is only its last resort
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _rank_dir(workdir: Path, rank: int) -> Path:
    """A rank's working directory: ``rank-<k>`` in the task's, or in the temp dir when this process
    cannot write the task's (it runs as a user other than the task's, who owns it)."""
    try:
        path = workdir / f"rank-{rank}"
        path.mkdir(parents=True, exist_ok=True)
        return path
    except PermissionError:
        return Path(tempfile.mkdtemp(prefix=f"rank-{rank}-"))


class Supervisor:
    """One node's ranks, their states, and what the other nodes say."""

    def __init__(
        self, group: RankGroup, node_rank: int, address: str, master: str, node_id: str, *, launched: float = 0.0
    ) -> None:
        self.group = group
        self.state = NodeState(
            node_rank=node_rank, node_id=node_id, address=address, since=time.time(), launched=launched
        )
        self.master = master
        self.procs: dict[int, _Forked] = {}
        self.failed: int | None = None  # a rank seen failed (here or anywhere): the others are ended
        self.born = time.monotonic()
        self.published = 0.0  # time.monotonic() of the last write of this node's state
        #: The primary's view of the other nodes' heartbeats: node rank -> (its beat, when, on this node's
        #: monotonic clock, that beat was first read). Only this node's clock measures a silence.
        self.heard: dict[int, tuple[int, float]] = {}
        self.looked = 0.0  # time.monotonic() of the last read of the other nodes' states
        #: On the primary started by its coordination command: a file whose presence says the application
        #: command has started, so every other node's coordination command has ended and written this
        #: attempt's state. Until then the other nodes' states may be an earlier attempt's: none is read.
        self.gate: Path | None = None

    def start(self, workdir: Path) -> None:
        group, node = self.group, self.state.node_rank
        threads = thread_budget(os.cpu_count() or 1, group.procs_per_node, os.environ)
        mine = range(node * group.procs_per_node, (node + 1) * group.procs_per_node)
        fetching = NodeFetch([group.specs[rank] for rank in mine], workdir)
        from batchmagic.runner.main import warm_up  # while the node's specs and bundle are read

        if group.procs_per_node > 1:
            warm_up()  # what each rank would do on first use (cloudpickle's import), once for the node
        fetched = fetching.done()
        ranks = []
        for local in range(group.procs_per_node):
            rank = node * group.procs_per_node + local
            env = threads | rank_environment(
                node_rank=node,
                local_rank=local,
                nodes=group.nodes,
                procs_per_node=group.procs_per_node,
                master_addr=self.master,
                master_port=group.master_port,
            )
            cwd = _rank_dir(workdir, rank)
            self.procs[rank] = _fork_runner(group.specs[rank], cwd, env, fetched)
            ranks.append(RankState(rank=rank, started=time.time(), pid=self.procs[rank].pid))
        self.state = replace(self.state, ranks=tuple(ranks))
        # Before the coordination command ends (and the primary reads it): this attempt's state must be in
        # the store, or the primary would read an earlier attempt's, or none and end a healthy run.
        self.publish_surely()

    def publish_surely(self) -> None:
        """Publish, trying again through a storage outage for up to PUBLISH_PATIENCE seconds: the node's
        first state, and its last (a node whose last word is "running" and then beats no more would look
        lost: the primary would end a run that went well)."""
        deadline, pause = time.monotonic() + PUBLISH_PATIENCE, 0.5
        while not self.publish() and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def publish(self) -> bool:
        """Write this node's state to the store, one heartbeat more; False (and a line) when the store did
        not take it."""
        self.state = replace(self.state, beat=self.state.beat + 1)
        self.published = time.monotonic()
        try:
            open_channel(self.group.states[self.state.node_rank]).write(self.state.to_json())
        except STORAGE_ERRORS as err:  # the ranks go on; the next look tries again
            print(f"batchmagic: could not write this node's state: {err}", file=sys.stderr)
            self.published = -1.0  # a change not written: write it on the next look, not a heartbeat later
            return False
        return True

    def reap(self) -> bool:
        """Note the ranks that ended since the last look; True if any did."""
        ranks, changed = list(self.state.ranks), False
        for i, rank in enumerate(ranks):
            code = self.procs[rank.rank].poll()
            if rank.code is None and code is not None:
                stopped = self.failed is not None and self.failed != rank.rank
                ranks[i] = replace(rank, code=code, ended=time.time(), stopped=stopped, after=self.failed)
                changed = True
                if code != 0 and self.failed is None:
                    self.failed = rank.rank
        if changed:
            self.state = replace(self.state, ranks=tuple(ranks), done=all(r.code is not None for r in ranks))
        return changed

    def others(self) -> list[NodeState]:
        """The other nodes' states the watch needs: every node's on the primary, the primary's elsewhere."""
        primary = self.state.node_rank == 0
        if self.gate is not None:
            if not self.gate.exists():
                return []
            self.gate, self.born = None, time.monotonic()  # the start deadline counts from here
        now = time.monotonic()
        if now - self.looked > HEARTBEAT:  # this loop itself stalled (a slow store): no silence was seen
            self.heard = {node: (beat, now) for node, (beat, _) in self.heard.items()}
        found = self._read_others(primary)
        self.looked = time.monotonic()
        return found

    def _read_others(self, primary: bool) -> list[NodeState]:
        found = []
        for node in range(self.group.nodes) if primary else [0]:
            if node == self.state.node_rank:
                continue
            try:
                state = NodeState.from_json(open_channel(self.group.states[node]).read())
            except (*STORAGE_ERRORS, ValueError, KeyError):
                # Not written yet (that node has not started), mid-write, or the store did not answer: nothing
                # is known of that node now, so its silence is not counted against it.
                if node in self.heard:
                    self.heard[node] = (self.heard[node][0], time.monotonic())
                continue
            if primary or state.since >= self.state.since - ATTEMPT_SKEW:
                found.append(state)
                if self.heard.get(node, (-1, 0.0))[0] != state.beat:
                    self.heard[node] = (state.beat, time.monotonic())
            # else: the primary's state of an earlier attempt (the task was requeued). Every node's coordination
            # command, the primary's too, starts its supervisor when the task is scheduled, so this attempt's
            # supervisors start within moments of each other (either may be first); an earlier attempt's is
            # older by at least the time it ran, a node's restart and a new scheduling. The primary needs no
            # such rule: every other node has written this attempt's state before its coordination command
            # ended (--coordinate).
        return found

    def stop(self) -> None:
        """End this node's ranks still running: SIGTERM (their runners write a result), then SIGKILL."""
        alive = [p for p in self.procs.values() if p.poll() is None]
        for proc in alive:
            proc.terminate()
        deadline = time.monotonic() + GRACE
        for proc in alive:
            if proc.wait(max(0.0, deadline - time.monotonic())) is None:
                proc.kill()
                proc.wait()

    def watch(self) -> int:
        """Until this node's ranks (on the primary: every rank) have ended; the supervisor's exit code."""
        primary = self.state.node_rank == 0
        while True:
            changed = self.reap()
            if changed and self.state.done:
                self.publish_surely()  # its last state: the supervisor beats no more once its ranks have ended
            elif changed or self.published < 0 or time.monotonic() - self.published >= HEARTBEAT:
                self.publish()
            others = self.others()
            if self.failed is None:
                self.failed = next((r.rank for n in others for r in n.ranks if r.code not in (None, 0)), None)
            if self.failed is None and primary:
                lost = self._silent(others) or self._never_started(others)
                if lost:  # their ranks are the cause: the readers blame them, and these stopped after them
                    self.failed = lost[0] * self.group.procs_per_node
                    self.state = replace(self.state, lost=tuple(lost))
                    self.publish()
            if self.failed is not None and not self.state.done:
                self.stop()
                continue  # reap them on the next turn
            ended = self.state.done and (
                not primary or sum(1 for n in others for r in n.ranks if r.code is not None) == self._remote_ranks()
            )
            if self.state.done and (ended or self.failed is not None):
                return self._verdict(others)
            time.sleep(POLL)

    def _never_started(self, others: list[NodeState]) -> list[int]:
        """Past START_TIMEOUT, the nodes whose supervisor never wrote its state (it did not start, or it died
        at once): the run cannot go on, and its ranks would wait for them in their first collective for
        PyTorch's 30 minutes."""
        if self.gate is not None or time.monotonic() - self.born < START_TIMEOUT:
            return []  # the other nodes' coordination commands may still run (a container starting)
        seen = {n.node_rank for n in others} | {0}
        return [node for node in range(self.group.nodes) if node not in seen]

    def _silent(self, others: list[NodeState]) -> list[int]:
        """The nodes whose heartbeat has not moved for SILENT seconds (by this node's clock) while their
        ranks run: hung (a frozen VM, a supervisor stopped) or lost with their VM. A node whose ranks have
        all ended beats no more, and one whose supervisor does not beat (beat 0: an older one) is not
        judged by it."""
        now = time.monotonic()
        return [
            n.node_rank
            for n in others
            if not n.done and n.beat and now - self.heard.get(n.node_rank, (0, now))[1] > SILENT
        ]

    def _remote_ranks(self) -> int:
        return (self.group.nodes - 1) * self.group.procs_per_node

    def _verdict(self, others: list[NodeState]) -> int:
        if self.failed is None:
            return 0
        where = next((n for n in [self.state, *others] for r in n.ranks if r.rank == self.failed), None)
        if where is not None and where.node_rank in self.state.lost:
            ranks = ", ".join(str(r.rank) for r in where.ranks)
            print(
                f"batchmagic: node {where.node_rank} ({where.node_id or where.address}), ranks {ranks}, went "
                f"silent: no heartbeat for {SILENT:.0f} s (the node hung or was lost); the other ranks were ended",
                file=sys.stderr,
            )
            return EXIT_RANK_FAILED
        if where is None:
            node = self.failed // self.group.procs_per_node
            print(
                f"batchmagic: node {node} never started its ranks (its supervisor wrote no state within "
                f"{START_TIMEOUT:.0f} s: see ranks.txt in that node's task directory); the other ranks were ended",
                file=sys.stderr,
            )
            return EXIT_RANK_FAILED
        code = next((r.code for r in where.ranks if r.rank == self.failed), None)
        print(
            f"batchmagic: rank {self.failed} on node {where.node_rank} ({where.node_id or where.address}) "
            f"exited with code {code}: the run's other ranks were ended",
            file=sys.stderr,
        )
        return EXIT_RANK_FAILED


#: Files of a node's supervisor in its status directory (``--status``): the application command creates
#: GO_FILE, the primary's supervisor writes its exit code to CODE_FILE and its pid to PID_FILE.
GO_FILE, CODE_FILE, PID_FILE = "go", "code", "supervisor.pid"


def coordinate(supervisor: Supervisor, workdir: Path, status: Path) -> int:
    """Every node, in its coordination command: start the ranks and write the node's state, then go on
    watching in a child and return (exit 0) once that state is in the store. The application command starts
    only after every coordination command has ended, so the primary (told by GO_FILE) never reads an earlier
    attempt's state of a node (a task requeued after a node restart runs every instance again). The ranks of
    every node, the primary's included, start at once: no node waits for another's interpreter to start."""
    for name in (GO_FILE, CODE_FILE):  # an earlier attempt's (a requeued task, on the same node)
        (status / name).unlink(missing_ok=True)
    ready, told = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork():  # the coordination command: wait until the child has written the node's state
        os.close(told)
        with os.fdopen(ready, "rb") as pipe:
            said = pipe.read(1)
        if said != b"1":
            print("batchmagic: this node's supervisor ended before it started its ranks", file=sys.stderr)
            return EXIT_RANK_FAILED
        return 0
    os.close(ready)
    code = EXIT_RANK_FAILED
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup did: outlive the coordination command's shell
        if supervisor.state.node_rank == 0:
            supervisor.gate = status / GO_FILE
            (status / PID_FILE).write_text(str(os.getpid()))
        supervisor.start(workdir)
        os.write(told, b"1")
        os.close(told)
        code = supervisor.watch()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        _write_code(status, code)
        os._exit(code)


def _write_code(status: Path, code: int) -> None:
    """The supervisor's exit code for the application command (written whole: it polls for the file)."""
    try:
        (status / f"{CODE_FILE}.tmp").write_text(str(code))
        os.replace(status / f"{CODE_FILE}.tmp", status / CODE_FILE)
    except OSError as err:
        print(f"batchmagic: could not write the supervisor's exit code: {err}", file=sys.stderr)


def process_started() -> float:
    """When this process started, by ``time.time()``'s clock (to 10 ms), from Linux's /proc; 0.0 elsewhere.
    In the coordination command it is when the node's shell started it: the start of the node's part."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def parse_args(argv: list[str]) -> tuple[str, str | None]:
    """``--group PATH [--coordinate STATUS_DIR]``: the group's path and the status directory (None without).
    The coordination command's own form is read as it is, without building argparse's parser (2 ms of a
    node's start); any other form goes to argparse (its --help, its errors)."""
    plain = len(argv) in (2, 4) and argv[0] == "--group" and argv[2:3] in ([], ["--coordinate"])
    if plain and not any(value.startswith("-") for value in argv[1::2]):
        return argv[1], argv[3] if len(argv) == 4 else None
    import argparse

    parser = argparse.ArgumentParser(prog="python -m batchmagic.runner.ranks", description=__doc__)
    parser.add_argument("--group", required=True, help="path of the run's group.json")
    parser.add_argument(
        "--coordinate",
        metavar="STATUS_DIR",
        help="the coordination command: exit 0 once this node's ranks have started and its state is written, "
        "and watch them in the background (the primary's verdict goes to STATUS_DIR/code)",
    )
    args = parser.parse_args(argv)
    return args.group, args.coordinate


def main(argv: list[str] | None = None) -> int:
    group_path, status_dir = parse_args(sys.argv[1:] if argv is None else argv)
    group = RankGroup.from_json(Path(group_path).read_bytes())
    env = os.environ
    hosts = [h for h in env.get("AZ_BATCH_HOST_LIST", "").split(",") if h] or ["127.0.0.1"]
    primary = env.get("AZ_BATCH_IS_CURRENT_NODE_MASTER", "true") == "true"
    master = env.get("AZ_BATCH_MASTER_NODE", hosts[0]).rsplit(":", 1)[0]
    hosts = node_order(hosts, master)
    node_rank, _held = claim_node(hosts, primary, group.master_port + 1)
    node_id = env.get("AZ_BATCH_NODE_ID", "")
    supervisor = Supervisor(group, node_rank, hosts[node_rank], master, node_id, launched=process_started())
    workdir = Path(env.get("AZ_BATCH_TASK_WORKING_DIR") or os.getcwd())
    if status_dir:
        return coordinate(supervisor, workdir, Path(status_dir))
    supervisor.start(workdir)
    return supervisor.watch()


if __name__ == "__main__":
    sys.exit(main())
