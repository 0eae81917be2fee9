"""Just enough of the registry HTTP API v2: does a tag exist (manifest HEAD), an image's labels (its
config blob), a repository's tags; with basic or bearer-token auth negotiated from the
``WWW-Authenticate`` challenge, and an Entra ID login exchanged for an ACR refresh token.

The only module of :mod:`batchmagic.package.image` that speaks HTTP (through ``requests``, imported lazily).
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any

from batchmagic.config import Secrets
from batchmagic.errors import ConfigError

if TYPE_CHECKING:
    import requests

__all__ = ["REGISTRY_TIMEOUT", "RegistryClient", "registry_credentials", "split_image"]

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


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "::1", "[::1]") or name.startswith("127.")


def registry_credentials(host: str, secrets: Secrets) -> tuple[str, str] | None:
    """(username, password) for ``host``: ``secrets``' registry credentials (BATCHMAGIC_REGISTRY_USERNAME /
    _PASSWORD), else for an Azure Container Registry an Entra ID token exchanged for an ACR refresh token;
    None when anonymous."""
    if secrets.registry_username and secrets.registry_password:
        return secrets.registry_username, secrets.registry_password
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
    """A registry's HTTP API v2: manifest HEAD/GET, config blobs, tags.

    Parameters
    ----------
    host : str
        ``myregistry.azurecr.io`` or ``127.0.0.1:5000`` (loopback hosts are spoken to over http).
    credentials : (str, str), optional
        Username and password; never logged or shown.
    timeout : float
        Seconds per HTTP request.
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

    def close(self) -> None:
        """Close the connections it keeps (a pooled socket left to the garbage collector is a ResourceWarning)."""
        self._session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get_token(self, challenge: str, scope_hint: str) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        params.setdefault("scope", scope_hint)
        response = self._session.get(realm, params=params, auth=self._credentials, timeout=self._timeout)
        if response.status_code in (401, 403):
            raise self._refused(response.status_code)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
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

    def request(
        self, method: str, path: str, *, repository: str = "", headers: dict[str, str] | None = None
    ) -> requests.Response:
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
        manifest: dict[str, Any] = response.json()
        if "manifests" in manifest:  # an index: take the linux/amd64 entry, else the first
            entries: list[dict[str, Any]] = manifest["manifests"]
            chosen = next((e for e in entries if (e.get("platform") or {}).get("architecture") == "amd64"), entries[0])
            return self.labels(repository, str(chosen["digest"]))
        blob = self.request("GET", f"/v2/{repository}/blobs/{manifest['config']['digest']}", repository=repository)
        if blob.status_code >= 400:
            return None
        config: dict[str, Any] = blob.json()
        return dict((config.get("config") or {}).get("Labels") or {})

    def tags(self, repository: str) -> list[str]:
        """The repository's tags, sorted; empty when the repository does not exist."""
        response = self.request("GET", f"/v2/{repository}/tags/list", repository=repository)
        if response.status_code == 404:
            return []
        body: dict[str, Any] = response.json()
        return sorted(body.get("tags") or [])
