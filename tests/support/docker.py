"""The container parts for tests: a private dockerd, Debian's ``docker-registry`` on loopback, and a
Debian base image made with debootstrap (Docker Hub is out of reach).

The base image is cached on disk under ``/tmp/batchmagic-test-cache`` keyed by a hash of what goes
into it, so a rerun imports a tarball instead of running debootstrap again. A test that needs these
parts fails loudly when run as root (CI); only a non-root run without ``DOCKER_HOST`` may skip.

Examples
--------
In a test module::

    from tests.support.docker import base_image, docker_engine, registry  # noqa: F401 (fixtures)

    def test_build(docker_engine, registry, base_image):
        ...
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.emulator import free_port

__all__ = [
    "DockerEngine",
    "RunningRegistry",
    "docker_engine",
    "registry",
    "base_image",
    "start_dockerd",
    "start_registry",
    "make_base_image",
]

CACHE = Path("/tmp/batchmagic-test-cache")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
MIRROR = os.environ.get("BATCHMAGIC_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
INCLUDE = "python3-minimal,python3-venv,python3-pip,passwd"
REGISTRY_USER = "trainer"
REGISTRY_PASSWORD = "registry-pass-5be1c0"


def _unavailable(reason: str) -> None:
    """Fail in CI (root), skip on a developer's machine without the parts."""
    if os.geteuid() == 0:
        pytest.fail(reason)
    pytest.skip(reason)


def unavailable_in_ci(reason: str) -> None:
    """Fail in CI (``CI`` set, or root), skip on a developer's machine without the part."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    _unavailable(reason)


def _docker(host: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DOCKER_HOST": host}
    return subprocess.run(["docker", *args], env=env, capture_output=True, check=False, **kwargs)


@dataclass
class DockerEngine:
    """A reachable Docker engine."""

    host: str  # a DOCKER_HOST value
    root: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    def run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """``docker ARGS`` against this engine."""
        return _docker(self.host, *args, **kwargs)

    def events(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """The engine's events between two times (``docker events --since --until``), parsed."""
        until = until if until is not None else time.time()
        out = self.run(
            "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--format", "{{json .}}"
        ).stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@contextmanager
def start_dockerd() -> Iterator[DockerEngine]:
    """A private dockerd (flags from NOTES.md: no bridge, no iptables) in a temp dir under /tmp."""
    if not shutil.which("dockerd"):
        _unavailable("dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        _unavailable("a private dockerd needs root: run as root or set DOCKER_HOST to a running engine")
    root = Path(tempfile.mkdtemp(prefix="bm-dockerd-", dir="/tmp"))
    _memory_data_root(root / "data")
    sock = root / "docker.sock"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - closed after dockerd ends
    proc = subprocess.Popen(
        [
            "dockerd",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "-H",
            f"unix://{sock}",
            "--pidfile",
            str(root / "dockerd.pid"),
            "--storage-driver",
            "overlay2",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--ip6tables=false",
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    engine = DockerEngine(f"unix://{sock}", root)
    deadline = time.monotonic() + 30
    while engine.run("version").returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("dockerd did not start:\n" + (root / "dockerd.log").read_text()[-2000:])
        time.sleep(0.2)
    try:
        yield engine
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        # A data root in memory goes with its unmount, at once; on disk, deleting an image with torch
        # unpacked (36,000 files, 1.2 GB) took 30 to 100 s on this machine's disk (unlinks wait on it).
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _memory_data_root(path: Path) -> bool:
    """Mount a tmpfs for a private dockerd's data root (its images, layers, containers): building, running
    and removing them never waits on the disk, whose unlinks made the session's end take minutes. Capped at
    half the machine's memory (used as it fills); ``BATCHMAGIC_TEST_DOCKERD_TMPFS=0`` keeps it on disk, as
    does a mount that fails. True when it is in memory."""
    path.mkdir(parents=True, exist_ok=True)
    if os.environ.get("BATCHMAGIC_TEST_DOCKERD_TMPFS", "1") == "0":
        return False
    size = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "bm-dockerd", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _unmount_under(root: Path) -> None:
    """Unmount whatever is mounted under ``root``, deepest first: the data root (a tmpfs) and what dockerd
    leaves mounted after it ends (its default network namespace, ``exec/netns/default``), so that nothing
    of a session stays mounted. One still busy is detached (lazily unmounted)."""
    prefix = f"{root}/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(set(points), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """$DOCKER_HOST if it answers, else a private dockerd started for the session."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and _docker(host, "version").returncode == 0:
        yield DockerEngine(host)
        return
    with start_dockerd() as engine:
        yield engine


@dataclass
class RunningRegistry:
    """Debian's ``docker-registry`` (CNCF distribution) on a loopback port, with htpasswd auth."""

    port: int
    root: Path
    username: str
    password: str = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        """GET a JSON document of the registry API (authenticated)."""
        request = urllib.request.Request(f"http://{self.host}{path}")
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def catalog(self) -> list[str]:
        return list(self.get("/v2/_catalog").get("repositories") or [])

    def tags(self, repository: str) -> list[str]:
        return list(self.get(f"/v2/{repository}/tags/list").get("tags") or [])

    def requests(self) -> list[dict[str, Any]]:
        """The requests the registry logged so far: method, path, status."""
        found = []
        for line in (self.root / "registry.log").read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            method = entry.get("http.request.method")
            if method and "http.response.status" in entry:
                found.append(
                    {
                        "method": method,
                        "path": entry.get("http.request.uri", ""),
                        "status": entry["http.response.status"],
                    }
                )
        return found

    def uploads(self) -> list[dict[str, Any]]:
        """Requests that upload blob data or manifests (what a push that sends anything makes)."""
        return [
            r
            for r in self.requests()
            if (r["method"] in ("POST", "PATCH", "PUT") and "/blobs/uploads/" in r["path"])
            or (r["method"] == "PUT" and "/manifests/" in r["path"])
        ]


def _bcrypt(password: str) -> str:
    """A bcrypt hash (the only kind the registry's htpasswd accepts), through libxcrypt's crypt(3)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated, but present on Python 3.11/3.12; libxcrypt supports $2b$

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


@contextmanager
def start_registry(
    tmp: Path, *, username: str = REGISTRY_USER, password: str = REGISTRY_PASSWORD
) -> Iterator[RunningRegistry]:
    """``docker-registry serve CONFIG`` on a free loopback port, storing under ``tmp``."""
    binary = shutil.which("docker-registry")
    if not binary:
        _unavailable("docker-registry is not installed (apt-get install docker-registry)")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "htpasswd").write_text(f"{username}:{_bcrypt(password)}\n")
    port = free_port()
    config = tmp / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"auth:\n  htpasswd:\n    realm: batchmagic-tests\n    path: {tmp / 'htpasswd'}\n"
    )
    log = open(tmp / "registry.log", "wb")  # noqa: SIM115 - closed when the registry ends
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    running = RunningRegistry(port, tmp, username, password, proc)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://{running.host}/v2/", timeout=2)
        except urllib.error.HTTPError as err:
            if err.code == 401:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("docker-registry did not start:\n" + (tmp / "registry.log").read_text()[-2000:])
        time.sleep(0.1)
    try:
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A loopback registry for the session (username/password auth)."""
    with start_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


def _base_key() -> str:
    ca = HOST_CA.read_bytes() if HOST_CA.exists() else b""
    return hashlib.sha256(f"{SUITE}|{INCLUDE}|{MIRROR}|1".encode() + ca).hexdigest()[:12]


def make_base_image(engine: DockerEngine) -> str:
    """A Debian bookworm image with Python 3, pip and venv, trusting the host's CA bundle.

    Built with ``debootstrap`` once, kept as a tarball under :data:`CACHE` and ``docker import``\\ ed
    into ``engine``; returns its name. Only the tests' base: the production Dockerfile stays clean.
    """
    key = _base_key()
    name = f"batchmagic-test-base:{key}"
    if engine.run("image", "inspect", name).returncode == 0:
        return name
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"base-{key}.tar"
    if not tarball.exists():
        if not shutil.which("debootstrap"):
            _unavailable("debootstrap is not installed (apt-get install debootstrap)")
        if os.geteuid() != 0:
            _unavailable("debootstrap needs root to build the tests' base image")
        root = Path(tempfile.mkdtemp(prefix="bm-rootfs-", dir="/tmp"))
        try:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(root), MIRROR],
                capture_output=True,
                check=False,
            )
            if done.returncode != 0:
                pytest.fail("debootstrap failed:\n" + done.stdout.decode(errors="replace")[-3000:])
            certs = root / "etc/ssl/certs"
            certs.mkdir(parents=True, exist_ok=True)
            if HOST_CA.exists():
                shutil.copy2(HOST_CA, certs / "ca-certificates.crt")
                (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
            shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
            partial = tarball.with_suffix(".partial")
            with open(partial, "wb") as out:
                subprocess.run(["tar", "-C", str(root), "-c", "."], stdout=out, check=True)
            partial.rename(tarball)
        finally:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    with open(tarball, "rb") as data:
        done = engine.run("import", "-", name, stdin=data)
    if done.returncode != 0:
        pytest.fail(f"docker import of the base image failed: {done.stderr.decode(errors='replace')}")
    return name


@pytest.fixture(scope="session")
def base_image(docker_engine: DockerEngine) -> str:
    """The tests' Debian base image (Python 3.11, pip, venv, the host's CA bundle), in the engine."""
    return make_base_image(docker_engine)
