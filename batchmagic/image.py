"""The training image: ask the registry, build with the docker SDK only when needed, push, guard.

:func:`ensure_image` turns an :class:`~batchmagic.environment.EnvironmentSpec` into an image in a
registry (or in the local engine): it asks the registry whether ``<registry>/<repo>:env-<hash>``
exists (a manifest HEAD); if so nothing is built or pushed. Otherwise it builds
``container/Dockerfile`` with the spec's requirements and a wheel of this very copy of batchmagic,
and pushes it, reporting build steps and megabytes pushed through a progress callback.

:func:`image_labels` reads an existing image's labels (from the registry's config blob or the local
engine) for the version guard. Every failure a user can fix is a one-line
:class:`~batchmagic.errors.ConfigError`. This module, :mod:`batchmagic.environment` and
:mod:`batchmagic.cli` are the only ones importing ``docker``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import batchmagic
from batchmagic.environment import LABEL, EnvironmentSpec, split_registry
from batchmagic.errors import ConfigError

__all__ = [
    "ImageResult",
    "RegistryClient",
    "build_context",
    "connect_engine",
    "ensure_image",
    "image_labels",
    "list_images",
    "registry_credentials",
]

log = logging.getLogger("batchmagic.image")

Progress = Callable[[str, str], None]  # (stage: "building" | "pushing", detail)
PING_TIMEOUT = 3.0
API_TIMEOUT = 900.0
REGISTRY_TIMEOUT = 10.0
_MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)
_ACR_USER = "00000000-0000-0000-0000-000000000000"  # the user name an ACR refresh token goes with


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
    """

    image: str
    built: bool = False
    pushed: bool = False
    bytes_pushed: int = 0
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)


# --- the registry (HTTP API v2) ---


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "::1", "[::1]") or name.startswith("127.")


def registry_credentials(host: str) -> tuple[str, str] | None:
    """(username, password) for ``host``: BATCHMAGIC_REGISTRY_USERNAME / _PASSWORD, else for an Azure
    Container Registry an Entra ID token exchanged for an ACR refresh token; None when anonymous."""
    user = os.environ.get("BATCHMAGIC_REGISTRY_USERNAME", "")
    password = os.environ.get("BATCHMAGIC_REGISTRY_PASSWORD", "")
    if user and password:
        return user, password
    if host.endswith(".azurecr.io"):
        return _acr_refresh_token(host)
    return None


def _acr_refresh_token(host: str) -> tuple[str, str]:
    import requests

    try:
        from azure.identity import DefaultAzureCredential

        token = DefaultAzureCredential().get_token("https://management.azure.com/.default").token
        response = requests.post(
            f"https://{host}/oauth2/exchange",
            data={"grant_type": "access_token", "service": host, "access_token": token},
            timeout=REGISTRY_TIMEOUT,
        )
        response.raise_for_status()
        return _ACR_USER, str(response.json()["refresh_token"])
    except Exception as err:
        raise ConfigError(
            f"could not get a token for registry {host} with your Entra ID login ({type(err).__name__}): "
            "run `az login`, or set BATCHMAGIC_REGISTRY_USERNAME and BATCHMAGIC_REGISTRY_PASSWORD"
        ) from None


class RegistryClient:
    """Just enough of the registry HTTP API v2: manifest HEAD/GET, config blobs, tags; with basic or
    bearer-token auth negotiated from the ``WWW-Authenticate`` challenge.

    Parameters
    ----------
    host : str
        ``myregistry.azurecr.io`` or ``127.0.0.1:5000`` (loopback hosts are spoken to over http).
    credentials : (str, str), optional
        Username and password; never logged or shown.
    """

    def __init__(self, host: str, credentials: tuple[str, str] | None = None, *, timeout: float = REGISTRY_TIMEOUT):
        import requests

        self.host = host
        self.scheme = "http" if _is_loopback(host) else "https"
        self._credentials = credentials
        self._session = requests.Session()
        self._timeout = timeout
        self._tokens: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<RegistryClient {self.host}>"

    def _get_token(self, challenge: str, scope_hint: str) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        params.setdefault("scope", scope_hint)
        auth = self._credentials
        response = self._session.get(realm, params=params, auth=auth, timeout=self._timeout)
        if response.status_code in (401, 403):
            raise self._refused(response.status_code)
        response.raise_for_status()
        body = response.json()
        return str(body.get("token") or body.get("access_token") or "")

    def _refused(self, status: int) -> ConfigError:
        if self._credentials:
            return ConfigError(
                f"registry {self.host} refused the credentials of user {self._credentials[0]!r} (HTTP {status}): "
                "check BATCHMAGIC_REGISTRY_USERNAME and BATCHMAGIC_REGISTRY_PASSWORD"
            )
        return ConfigError(
            f"registry {self.host} needs credentials (HTTP {status}): "
            "set BATCHMAGIC_REGISTRY_USERNAME and BATCHMAGIC_REGISTRY_PASSWORD"
        )

    def request(self, method: str, path: str, *, repository: str = "", headers: dict[str, str] | None = None) -> Any:
        """One API call, authenticating as the registry asks; ConfigError if unreachable or refused."""
        import requests

        url = f"{self.scheme}://{self.host}{path}"
        scope = f"repository:{repository}:pull" if repository else "registry:catalog:*"
        headers = dict(headers or {})
        try:
            for _attempt in range(2):
                if scope in self._tokens:
                    headers["Authorization"] = f"Bearer {self._tokens[scope]}"
                elif self._credentials and "basic" in self._tokens:
                    token = base64.b64encode(":".join(self._credentials).encode()).decode()
                    headers["Authorization"] = f"Basic {token}"
                response = self._session.request(method, url, headers=headers, timeout=self._timeout)
                if response.status_code != 401 or "Authorization" in headers:
                    break
                challenge = response.headers.get("WWW-Authenticate", "")
                if challenge.lower().startswith("bearer"):
                    self._tokens[scope] = self._get_token(challenge, scope)
                elif self._credentials:
                    self._tokens["basic"] = "yes"
                else:
                    raise self._refused(401)
        except requests.RequestException as err:
            raise ConfigError(
                f"registry {self.host} is unreachable ({type(err).__name__}): check BATCHMAGIC_REGISTRY"
            ) from None
        if response.status_code in (401, 403):
            raise self._refused(response.status_code)
        return response

    def manifest_exists(self, repository: str, reference: str) -> bool:
        """HEAD the manifest: True if the registry has ``repository:reference``."""
        response = self.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            repository=repository,
            headers={"Accept": _MANIFEST_TYPES},
        )
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            raise ConfigError(f"registry {self.host} answered HTTP {response.status_code} for {repository}:{reference}")
        return True

    def labels(self, repository: str, reference: str) -> dict[str, str] | None:
        """The image's labels (from its config blob), or None if the registry lacks the image."""
        response = self.request(
            "GET", f"/v2/{repository}/manifests/{reference}", repository=repository, headers={"Accept": _MANIFEST_TYPES}
        )
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise ConfigError(f"registry {self.host} answered HTTP {response.status_code} for {repository}:{reference}")
        manifest = response.json()
        if "manifests" in manifest:  # an index: take the linux/amd64 entry, else the first
            entries = manifest["manifests"]
            chosen = next((e for e in entries if (e.get("platform") or {}).get("architecture") == "amd64"), entries[0])
            return self.labels(repository, chosen["digest"])
        blob = self.request("GET", f"/v2/{repository}/blobs/{manifest['config']['digest']}", repository=repository)
        if blob.status_code >= 400:
            return None
        config = blob.json()
        return dict((config.get("config") or {}).get("Labels") or {})

    def tags(self, repository: str) -> list[str]:
        response = self.request("GET", f"/v2/{repository}/tags/list", repository=repository)
        if response.status_code == 404:
            return []
        return sorted(response.json().get("tags") or [])


def split_image(image: str) -> tuple[str, str, str]:
    """``host/repo/name:tag`` -> ``(host, "repo/name", "tag")``; host is "" for a name without one."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = "", image
    if "@" in path:
        repository, _, reference = path.partition("@")
    elif ":" in path.rsplit("/", 1)[-1]:
        repository, _, reference = path.rpartition(":")
    else:
        repository, reference = path, "latest"
    return host, repository, reference


# --- the engine ---


def connect_engine(timeout: float = API_TIMEOUT) -> Any:
    """A docker SDK client for DOCKER_HOST (or the default socket), checked with a short ping.

    Raises
    ------
    ConfigError
        No engine answers: one line with the two ways forward.
    """
    import docker

    where = os.environ.get("DOCKER_HOST") or "the default socket"
    try:
        probe = docker.from_env(timeout=PING_TIMEOUT)
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
        raise ConfigError(
            f"no Docker engine is reachable at {where} ({reason}): start Docker (or set DOCKER_HOST), "
            "or pass a prebuilt image with --image"
        ) from None


# --- the build context ---


def _dockerfile() -> str:
    """container/Dockerfile: from the source checkout, else where the wheel installs it (data-files)."""
    import sys

    for candidate in (
        Path(batchmagic.__file__).resolve().parents[1] / "container" / "Dockerfile",
        Path(sys.prefix) / "share" / "batchmagic" / "Dockerfile",
    ):
        if candidate.exists():
            return candidate.read_text()
    raise ConfigError("batchmagic's container/Dockerfile is missing from this installation: reinstall batchmagic")


def build_wheel(dest: Path) -> Path:
    """A wheel of this process's own copy of batchmagic (same version, same sources), built without
    touching an index: the runner in the image is exactly the code that packaged the cell."""
    package = Path(batchmagic.__file__).resolve().parent
    version = batchmagic.__version__
    dist_info = f"batchmagic-{version}.dist-info"
    files: dict[str, bytes] = {}
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" not in path.parts:
            files[f"batchmagic/{path.relative_to(package).as_posix()}"] = path.read_bytes()
    files[f"{dist_info}/METADATA"] = (
        "Metadata-Version: 2.1\nName: batchmagic\n"
        f"Version: {version}\nSummary: The batchmagic runner (training image copy).\n"
        "Requires-Python: >=3.11\nProvides-Extra: runner\n"
        'Requires-Dist: cloudpickle>=3.0; extra == "runner"\n'
        'Requires-Dist: azure-storage-blob<13,>=12.20; extra == "runner"\n'
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: batchmagic\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"batchmagic-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)
    return wheel


def build_context(spec: EnvironmentSpec, directory: Path) -> Path:
    """Write the build context (Dockerfile, requirements.txt, wheels/) for ``spec`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(_dockerfile())
    (directory / "requirements.txt").write_text(spec.requirements_txt())
    build_wheel(directory / "wheels")
    return directory


# --- build and push ---


def _build_error(message: str, output: list[str]) -> ConfigError:
    """The build's error, shortened to what a user can act on (the failing requirement, the Python)."""
    text = "\n".join(output + [message])
    match = re.search(r"batchmagic: the base image has Python [^\n']+", text)
    if match:
        return ConfigError(f"{match.group(0).strip()}: choose a base image with the kernel's Python (--base-image)")
    match = re.search(r"No matching distribution found for ([^\s]+)", text)
    if match:
        return ConfigError(f"pip cannot install {match.group(1)} in the image: no such version on the package index")
    match = re.search(r"Could not find a version that satisfies the requirement ([^\s]+)", text)
    if match:
        return ConfigError(f"pip cannot install {match.group(1)} in the image: no such version on the package index")
    match = re.search(r"ERROR: (.+)", text)
    line = match.group(1) if match else message.strip().splitlines()[-1] if message.strip() else "unknown error"
    return ConfigError(f"the image build failed: {line.strip()[:300]}")


def _stream_build(client: Any, context: Path, tag: str, spec: EnvironmentSpec, progress: Progress) -> list[str]:
    steps: list[str] = []
    output: list[str] = []
    stream: Iterator[dict[str, Any]] = client.api.build(
        path=str(context),
        tag=tag,
        buildargs={"BASE_IMAGE": spec.base_image, "PYTHON_VERSION": spec.python},
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


def _push(client: Any, image: str, credentials: tuple[str, str] | None, progress: Progress) -> int:
    """Push ``image``; return the bytes of layer data sent (0 when every layer already existed)."""
    host, repository, tag = split_image(image)
    auth = {"username": credentials[0], "password": credentials[1]} if credentials else None
    sent: dict[str, int] = {}
    last = 0.0
    for chunk in client.api.push(
        f"{host}/{repository}" if host else repository, tag=tag, auth_config=auth, stream=True, decode=True
    ):
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
    credentials = registry_credentials(host) if host and push else None
    if host and push:
        client = RegistryClient(host, credentials)
        if client.manifest_exists(repository, reference):
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


# --- reading an image's labels (the guard's input) ---


def image_labels(image: str, *, engine_first: bool = False) -> dict[str, str] | None:
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
    return RegistryClient(host, registry_credentials(host)).labels(repository, reference)


def list_images(registry: str) -> list[tuple[str, EnvironmentSpec | None]]:
    """The training images in ``registry``'s repository (or in the local engine when it is empty)."""
    host, repository = split_registry(registry)
    found: list[tuple[str, EnvironmentSpec | None]] = []
    if host:
        client = RegistryClient(host, registry_credentials(host))
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


# --- what Session.submit uses ---


class GuardWarning(UserWarning):
    """The version guard could not look at the configured image; the run goes on unchecked."""


@dataclass
class ImageRequest:
    """How a submit gets its image: a given one (checked by the guard) or one built for the cell.

    Made by :func:`plan_image` before anything is packaged (so a bad ``--requirements`` is one line
    up front); :meth:`resolve` runs after packaging, when the shipped objects are known.
    """

    given: str = ""
    registry: str = ""
    base_image: str = ""
    requirements: str | Path | None = None
    pip: tuple[str, ...] = ()
    push: bool = True
    engine_first: bool = False
    configured: bool = False  # ``given`` came from the settings (AzBatch.image), not from --image
    result: ImageResult | None = None

    def spec_for(self, modules: Iterable[str]) -> EnvironmentSpec:
        from batchmagic.environment import environment_spec

        return environment_spec(modules, base_image=self.base_image, requirements=self.requirements, pip=self.pip)

    def resolve(self, captured: Any, enter: Callable[..., None]) -> str:
        """The image to run ``captured`` (a :class:`~batchmagic.capture.CapturedCell`) in.

        ``enter(phase, detail)`` is called for the build and push phases (``Run._enter``).

        Raises
        ------
        ConfigError
            The guard found a mismatch, or the image could not be found, built or pushed.
        """
        from batchmagic.backends.base import Phase
        from batchmagic.environment import check_compatible, shipped_modules

        modules = shipped_modules(captured.path, captured.analysis.imported_modules, captured.manifest.modules)
        if self.given:
            try:
                labels = image_labels(self.given, engine_first=self.engine_first)
            except ConfigError as err:
                if self.configured:
                    # The image of the settings, whose registry this client may not reach: run it, say so.
                    warnings.warn(
                        f"could not check {self.given} against this kernel: {err}", GuardWarning, stacklevel=2
                    )
                    return self.given
                if self.engine_first or split_image(self.given)[0]:
                    raise
                labels = {}  # a public image name and no engine here to ask: nothing to compare
            if labels is None and self.configured:
                warnings.warn(
                    f"{self.given} is not in its registry (as far as this client can see)", GuardWarning, stacklevel=2
                )
                return self.given
            if labels is None:
                where = "the local Docker engine" if self.engine_first else f"registry {split_image(self.given)[0]}"
                raise ConfigError(f"image {self.given} is not in {where}: build it first or check the name")
            check_compatible(self.given, labels, modules)
            return self.given
        spec = self.spec_for(modules)
        stages = {"building": Phase.BUILDING_IMAGE, "pushing": Phase.PUSHING_IMAGE}
        self.result = ensure_image(
            spec, self.registry, push=self.push, progress=lambda stage, detail: enter(stages[stage], detail)
        )
        return self.result.image


def plan_image(
    backend: str,
    *,
    image: str | None = None,
    configured_image: str | None = None,
    container: bool = False,
    registry: str | None = None,
    base_image: str | None = None,
    requirements: str | Path | None = None,
    pip: Iterable[str] = (),
) -> ImageRequest | None:
    """Decide, before packaging, where a run's image comes from; None when it needs none of ours.

    - ``--image`` given: that image, after the guard.
    - ``--backend local --container``: build (or reuse) the image in the local engine, no push.
    - Azure with no image configured and a registry (``BATCHMAGIC_REGISTRY``): build-or-reuse and push.

    Raises
    ------
    ConfigError
        ``--requirements`` missing or unparsable, a malformed ``--pip`` or registry, or flags that
        do not apply (``--container`` on Azure, ``--requirements`` with ``--image``).
    """
    from batchmagic.config import setting
    from batchmagic.environment import parse_pip, read_requirements

    pip = tuple(pip or ())
    registry = registry if registry is not None else setting("registry")
    base_image = base_image or setting("base_image")
    if container and backend != "local":
        raise ConfigError("--container is for --backend local (on Azure every task runs in a container)")
    if image and (requirements or pip):
        raise ConfigError("--image runs a prebuilt image as is: drop --requirements/--pip, or drop --image to build")
    if requirements:
        read_requirements(requirements)
    parse_pip(pip)
    if registry:
        split_registry(registry)
    if image:
        if backend == "local" and not container:
            raise ConfigError("--image on the local backend needs --container (it runs the task in that image)")
        return ImageRequest(given=image, engine_first=backend == "local")
    if backend == "local":
        if not container:
            if requirements or pip:
                raise ConfigError("--requirements/--pip build an image: add --container, or use the azure backend")
            return None
        return ImageRequest(registry=registry, base_image=base_image, requirements=requirements, pip=pip, push=False)
    if configured_image and not (requirements or pip):
        return ImageRequest(given=configured_image, configured=True)  # the guard runs on it too
    if not registry:
        if requirements or pip:
            raise ConfigError(
                "--requirements/--pip need a registry to push the image to: set BATCHMAGIC_REGISTRY "
                "(e.g. myregistry.azurecr.io/batchmagic) or %config AzBatch.registry = '...'"
            )
        return None
    return ImageRequest(registry=registry, base_image=base_image, requirements=requirements, pip=pip)
