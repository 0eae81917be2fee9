"""The Docker engine: build the image for a spec and push it, only when the registry lacks it; read an
existing image's labels (the guard's input); list the training images.

:func:`ensure_image` turns an :class:`~batchmagic.package.environment.EnvironmentSpec` into an image in a
registry (or in the local engine): it asks the registry whether ``<registry>/<repo>:env-<hash>``
exists (a manifest HEAD); if so nothing is built or pushed. Otherwise it builds
``container/Dockerfile`` with the spec's requirements and a wheel of this very copy of batchmagic
(:mod:`batchmagic.package.image.context`), and pushes it, reporting build steps and megabytes pushed through
a progress callback.

The only module of the client that imports the docker SDK, lazily (``backends/local.py`` runs
``--container`` tasks with the docker CLI; the Batch emulator's docker executor imports the SDK for
its own tasks). Every failure a user can fix is a one-line :class:`~batchmagic.errors.ConfigError`.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchmagic.config import Secrets, docker_host
from batchmagic.errors import ConfigError
from batchmagic.package.environment import LABEL, EnvironmentSpec, split_registry
from batchmagic.package.image.context import build_context
from batchmagic.package.image.registry import RegistryClient, registry_credentials, split_image

if TYPE_CHECKING:
    from docker import DockerClient

__all__ = [
    "API_TIMEOUT",
    "PING_TIMEOUT",
    "ImageResult",
    "Progress",
    "connect_engine",
    "describe",
    "ensure_image",
    "image_labels",
    "list_images",
]


class NoEngineError(ConfigError):
    """No Docker engine answers here (a laptop without Docker, a notebook server without a socket)."""


log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]  # (stage: "building" | "pushing", detail)
PING_TIMEOUT = 3.0
API_TIMEOUT = 900.0


#: No registry credentials: anonymous (or, for an Azure Container Registry, your Entra ID login).
_ANONYMOUS = Secrets()


def _no_progress(stage: str, detail: str) -> None:
    return None


@dataclass
class ImageResult:
    """What :func:`ensure_image` did.

    Attributes
    ----------
    image : str
        The image name to run.
    built, pushed : bool
        Whether it was built / pushed now (both False when the registry already had it).
    bytes_pushed : int
        Bytes of layer data sent to the registry.
    seconds : float
        Wall time spent.
    steps : list of str
        The Dockerfile steps the build ran.
    """

    image: str
    built: bool = False
    pushed: bool = False
    bytes_pushed: int = 0
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)


def connect_engine(timeout: float = API_TIMEOUT) -> DockerClient:
    """A docker SDK client for DOCKER_HOST (or the default socket), checked with a short ping.

    Raises
    ------
    ConfigError
        No engine answers: one line with the two ways forward.
    """
    import docker

    where = docker_host() or "the default socket"
    socket_path = (docker_host() or "unix:///var/run/docker.sock").removeprefix("unix://")
    if "://" not in socket_path and not Path(socket_path).exists():
        # Asked anyway, the docker SDK leaks the socket it failed to connect (a ResourceWarning in the notebook).
        raise NoEngineError(
            f"no Docker engine is reachable at {where} (no socket there): start Docker (or set DOCKER_HOST), "
            "or pass a prebuilt image with --image"
        )
    try:
        # A fixed API version: the probe connects only in ping(), inside the try that closes it (with "auto",
        # the constructor connects to ask the version, and a refused connection leaks its socket).
        probe = docker.from_env(timeout=PING_TIMEOUT, version="1.24")
        try:
            probe.ping()
        finally:
            probe.close()
        return docker.from_env(timeout=timeout)
    except Exception as err:
        text = str(err)
        if "FileNotFoundError" in text or "No such file" in text:
            reason = "no socket there"
        elif "Connection refused" in text or "ConnectionRefused" in text:
            reason = "connection refused"
        elif "timed out" in text.lower():
            reason = "no answer within a few seconds"
        else:
            reason = text.replace("Error while fetching server API version: ", "").splitlines()[0][:100] or "error"
        raise NoEngineError(
            f"no Docker engine is reachable at {where} ({reason}): start Docker (or set DOCKER_HOST), "
            "or pass a prebuilt image with --image"
        ) from None


# --- build and push ---


def _build_error(message: str, output: list[str]) -> ConfigError:
    """The build's error, shortened to what a user can act on (the failing requirement, the Python)."""
    text = "\n".join(output + [message])
    match = re.search(r"batchmagic: the base image has Python [^\n']+", text)
    if match:
        return ConfigError(
            f"{match.group(0).strip()}: choose a base image with the kernel's Python in AzBatch.base_image "
            "or BATCHMAGIC_BASE_IMAGE (or `batchmagic image build --base-image`)"
        )
    match = re.search(r"No matching distribution found for ([^\s]+)", text)
    if match:
        return ConfigError(f"pip cannot install {match.group(1)} in the image: no such version on the package index")
    match = re.search(r"Could not find a version that satisfies the requirement ([^\s]+)", text)
    if match:
        return ConfigError(f"pip cannot install {match.group(1)} in the image: no such version on the package index")
    match = re.search(r"ERROR: (.+)", text)
    line = match.group(1) if match else message.strip().splitlines()[-1] if message.strip() else "unknown error"
    return ConfigError(f"the image build failed: {line.strip()[:300]}")


def _stream_build(
    client: DockerClient, context: Path, tag: str, spec: EnvironmentSpec, progress: Progress
) -> list[str]:
    steps: list[str] = []
    output: list[str] = []
    stream: Iterator[dict[str, Any]] = client.api.build(
        path=str(context),
        tag=tag,
        buildargs={
            "BASE_IMAGE": spec.base_image,
            "PYTHON_VERSION": spec.python,
            "BATCHMAGIC_PIP_EXTRA_INDEX_URL": spec.pip_index,
        },
        labels={LABEL: spec.to_json(), "org.batchmagic.python": spec.python},
        network_mode="host",  # dockerd may run without a bridge; pip needs the network
        rm=True,
        forcerm=True,
        decode=True,
    )
    for chunk in stream:
        if "error" in chunk:
            raise _build_error(str(chunk.get("error", "")), output)
        line = str(chunk.get("stream", "")).rstrip()
        if not line:
            continue
        output.append(line)
        output[:] = output[-200:]
        if line.startswith("Step "):
            steps.append(line)
            progress("building", line[:120])
    return steps


def _push(client: DockerClient, image: str, credentials: tuple[str, str] | None, progress: Progress) -> int:
    """Push ``image``; return the bytes of layer data sent (0 when every layer already existed)."""
    host, repository, tag = split_image(image)
    auth = {"username": credentials[0], "password": credentials[1]} if credentials else None
    sent: dict[str, int] = {}
    last = 0.0
    stream: Iterator[dict[str, Any]] = client.api.push(
        f"{host}/{repository}" if host else repository, tag=tag, auth_config=auth, stream=True, decode=True
    )
    for chunk in stream:
        if "error" in chunk:
            error = str(chunk["error"])
            if "unauthorized" in error.lower() or "authentication required" in error.lower():
                user = credentials[0] if credentials else None
                raise ConfigError(
                    f"registry {host} refused the push"
                    + (f" for user {user!r}" if user else "")
                    + ": check BATCHMAGIC_REGISTRY_USERNAME and BATCHMAGIC_REGISTRY_PASSWORD"
                )
            raise ConfigError(f"pushing {image} failed: {error.splitlines()[0][:300]}")
        status = chunk.get("status", "")
        layer = chunk.get("id", "")
        detail = chunk.get("progressDetail") or {}
        if status == "Pushing" and layer:
            sent[layer] = max(sent.get(layer, 0), int(detail.get("current") or 0))
        now = time.monotonic()
        if sent and now - last > 2.0:  # a panel line every 2 s at most
            last = now
            progress("pushing", f"{sum(sent.values()) / 1e6:.1f} MB pushed")
    total = sum(sent.values())
    progress("pushing", f"{total / 1e6:.1f} MB pushed")
    return total


def ensure_image(
    spec: EnvironmentSpec,
    registry: str,
    *,
    push: bool = True,
    progress: Progress | None = None,
    secrets: Secrets = _ANONYMOUS,
) -> ImageResult:
    """The image for ``spec``: reused if the registry (or, without one, the local engine) has it,
    else built and pushed.

    Parameters
    ----------
    spec : EnvironmentSpec
        The environment; its hash is the tag.
    registry : str
        ``host[/repository]`` (``BATCHMAGIC_REGISTRY``); empty for a local-only image.
    push : bool
        Push to the registry after building (False for ``--backend local --container``).
    progress : callable, optional
        ``progress(stage, detail)`` with stage ``"building"`` or ``"pushing"``.
    secrets : Secrets, optional
        The registry's credentials (``Settings.secrets``); none: anonymous, or Entra ID for ACR.

    Raises
    ------
    ConfigError
        The registry is unreachable or refuses the credentials, no engine answers, the build fails
        (shortened to the failing requirement) or the push is refused.
    """
    progress = progress or _no_progress
    started = time.monotonic()
    tag = spec.tag(registry)
    host, repository, reference = split_image(tag)
    credentials = registry_credentials(host, secrets) if host and push else None
    if host and push:
        with RegistryClient(host, credentials) as client:
            exists = client.manifest_exists(repository, reference)
        if exists:
            log.info("registry has %s: no build, no push", tag)
            return ImageResult(tag, seconds=time.monotonic() - started)
    engine = connect_engine()
    try:
        built = False
        steps: list[str] = []
        try:
            engine.images.get(tag)
        except Exception:  # noqa: BLE001 - not in the engine: build it
            progress("building", f"{tag} from {spec.base_image}")
            with tempfile.TemporaryDirectory(prefix="batchmagic-image-") as tmp:
                steps = _stream_build(engine, build_context(spec, Path(tmp)), tag, spec, progress)
            built = True
        pushed = 0
        if host and push:
            progress("pushing", f"{tag}")
            pushed = _push(engine, tag, credentials, progress)
        return ImageResult(
            tag, built=built, pushed=bool(host and push), bytes_pushed=pushed, seconds=time.monotonic() - started,
            steps=steps,
        )  # fmt: skip
    finally:
        engine.close()


# --- existing images ---


def image_labels(image: str, *, engine_first: bool = False, secrets: Secrets = _ANONYMOUS) -> dict[str, str] | None:
    """An image's labels: from the local engine or from its registry's config blob.

    Returns None when neither has the image.
    """
    host, repository, reference = split_image(image)

    def from_engine() -> dict[str, str] | None:
        client = connect_engine(timeout=30)
        try:
            return dict(client.images.get(image).labels or {})
        except Exception:  # noqa: BLE001 - not there
            return None
        finally:
            client.close()

    if engine_first or not host:
        return from_engine()
    with RegistryClient(host, registry_credentials(host, secrets)) as client:
        return client.labels(repository, reference)


def list_images(registry: str, secrets: Secrets = _ANONYMOUS) -> list[tuple[str, EnvironmentSpec | None]]:
    """The training images in ``registry``'s repository (or in the local engine when it is empty)."""
    host, repository = split_registry(registry)
    found: list[tuple[str, EnvironmentSpec | None]] = []
    if host:
        with RegistryClient(host, registry_credentials(host, secrets)) as client:
            for tag in client.tags(repository):
                if tag.startswith("env-"):
                    labels = client.labels(repository, tag) or {}
                    found.append((f"{host}/{repository}:{tag}", _spec_of(labels)))
        return found
    engine = connect_engine(timeout=30)
    try:
        for item in engine.images.list(filters={"label": LABEL}):
            for tag in item.tags:
                found.append((tag, _spec_of(item.labels or {})))
    finally:
        engine.close()
    return sorted(found, key=lambda pair: pair[0])


def _spec_of(labels: dict[str, str]) -> EnvironmentSpec | None:
    try:
        return EnvironmentSpec.from_json(labels[LABEL])
    except (KeyError, ValueError, TypeError):
        return None


def describe(spec: EnvironmentSpec | None) -> str:
    """A short line about a spec: Python and requirements."""
    if spec is None:
        return "(no batchmagic labels)"
    reqs = ", ".join(spec.requirements) or "no requirements"
    return f"python {spec.python}; {reqs}"
