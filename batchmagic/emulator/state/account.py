"""Account-level features that mean little offline but are kept as the service keeps them.

- Certificates (``/certificates``): stored, listed, deleted; nothing installs them on nodes. The
  service has retired them for new pools, yet still answers the API for accounts that have them.
- Node service logs (``uploadbatchservicelogs``): the emulator's own record of the node is uploaded to
  the container the caller names, in the background, as the service does.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import re
import tempfile
import urllib.error
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from batchmagic.emulator.errors import ApiError, exists, invalid_property, not_found
from batchmagic.emulator.state.files import FilesMixin
from batchmagic.emulator.state.model import iso, touch, transition
from batchmagic.emulator.transfer import put_blob

__all__ = ["AccountMixin"]

log = logging.getLogger("batchmagic.emulator")


class AccountMixin(FilesMixin):
    """Certificates and node log uploads."""

    @staticmethod
    def _cert_key(algorithm: str, thumbprint: str) -> str:
        return f"{algorithm.lower()}-{thumbprint.lower()}"

    def create_certificate(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /certificates``: store a certificate (``data`` and ``password`` are never returned)."""
        algorithm = str(body["thumbprintAlgorithm"])
        thumbprint = str(body["thumbprint"])
        if algorithm.lower() != "sha1":
            raise invalid_property("thumbprintAlgorithm", algorithm)
        if not re.fullmatch(r"[0-9A-Fa-f]{40}", thumbprint):
            raise invalid_property("thumbprint", thumbprint)
        try:
            base64.b64decode(str(body["data"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid_property("data", "(certificate data)", "The certificate data is not base64.") from exc
        with self.lock:
            key = self._cert_key(algorithm, thumbprint)
            if key in self.certificates:
                raise exists("CertificateExists")
            now = self.now()
            data: dict[str, Any] = {
                "thumbprint": thumbprint.lower(),
                "thumbprintAlgorithm": algorithm.lower(),
                "url": f"{self.url}/certificates(thumbprintAlgorithm={algorithm.lower()},thumbprint={thumbprint.lower()})",  # noqa: E501
                "state": "active",
                "stateTransitionTime": iso(now),
                "publicData": "",
            }
            touch(data, now)
            self.certificates[key] = data
            return copy.deepcopy(data)

    def _certificate(self, algorithm: str, thumbprint: str) -> dict[str, Any]:
        found = self.certificates.get(self._cert_key(algorithm, thumbprint))
        if found is None:
            raise not_found("CertificateNotFound")
        return found

    def list_certificates(self) -> list[dict[str, Any]]:
        """All certificates."""
        with self.lock:
            return [self.view(c) for c in self.certificates.values()]

    def get_certificate(self, algorithm: str, thumbprint: str) -> dict[str, Any]:
        """One certificate."""
        with self.lock:
            return self.view(self._certificate(algorithm, thumbprint))

    def delete_certificate(self, algorithm: str, thumbprint: str) -> None:
        """``DELETE /certificates(...)``: no pool here uses a certificate, so it goes at once."""
        with self.lock:
            self._certificate(algorithm, thumbprint)
            del self.certificates[self._cert_key(algorithm, thumbprint)]

    def cancel_certificate_deletion(self, algorithm: str, thumbprint: str) -> dict[str, Any]:
        """``POST .../canceldelete``: only a certificate whose deletion failed can be restored."""
        with self.lock:
            cert = self._certificate(algorithm, thumbprint)
            if cert["state"] != "deletefailed":
                raise ApiError(
                    409,
                    "CertificateStateActive",
                    "The specified certificate is not in the deletefailed state.",
                    [("CertificateState", str(cert["state"]))],
                )
            now = self.now()
            transition(cert, "active", now)
            touch(cert, now)
            return copy.deepcopy(cert)

    def upload_node_logs(self, pool_id: str, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST .../uploadbatchservicelogs``: upload the node's service log to ``containerUrl``.

        The service answers with the files it will upload, and uploads them afterwards. The emulator
        uploads before it answers, so ``numberOfFilesUploaded`` counts only the files the container
        really received (0 when it could not be written, with a warning in the emulator's log).
        """
        container_url = str(body["containerUrl"])
        parts = urllib.parse.urlsplit(container_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise invalid_property("containerUrl", "(container URL)")
        with self.lock:
            pool = self._pool(pool_id)
            node = pool.nodes.get(node_id)
            if node is None:
                raise not_found("NodeNotFound")
            files = {"batch-agent.log": json.dumps(self.view(node.data), indent=2) + "\n"}
        directory = f"{pool_id}/{node_id}/{uuid.uuid4()}"
        base, _, sas = container_url.partition("?")
        uploaded = 0
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                path = Path(tmp) / name
                path.write_text(text, encoding="utf-8")
                url = f"{base.rstrip('/')}/{urllib.parse.quote(directory)}/{name}" + (f"?{sas}" if sas else "")
                try:
                    put_blob(url, path, [])
                except (urllib.error.URLError, OSError) as exc:
                    log.warning("node log upload for %s to %s failed: %s", node_id, base, exc)
                    continue
                uploaded += 1
        return {"virtualDirectoryName": directory, "numberOfFilesUploaded": uploaded}
