"""SharedKey verification for the Batch emulator.

The string to sign is rebuilt exactly as ``azure.batch._patch.BatchSharedKeyAuthPolicy`` builds it
(azure-batch 15.1): verb, eleven standard headers, the sorted ``ocp-*`` headers, ``/account/path``
and the sorted query parameters (first value of each, blanks dropped).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

__all__ = ["string_to_sign", "sign", "verify"]

_HEADERS_TO_SIGN = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


def string_to_sign(method: str, raw_path: str, headers: Mapping[str, str], account: str) -> str:
    """Build the SharedKey string to sign for one request.

    Parameters
    ----------
    method : str
        The HTTP verb.
    raw_path : str
        The request target as sent (path and query, still percent-encoded).
    headers : Mapping[str, str]
        The request headers; names are compared case-insensitively.
    account : str
        The Batch account name.
    """
    lowered = {k.lower(): v for k, v in headers.items() if v}
    if method not in ("GET", "HEAD") and "content-length" not in lowered:
        lowered["content-length"] = "0"
    out = method + "\n" + "\n".join(str(lowered.get(h, "")) for h in _HEADERS_TO_SIGN) + "\n"
    ocp = sorted((k.lower(), v) for k, v in headers.items() if "ocp-" in k.lower() and v)
    for name, value in ocp:
        out += f"{name}:{value}\n"
    parts = urlsplit(raw_path)
    out += f"/{account}{parts.path}"
    query = parse_qs(parts.query)
    for name in sorted(query):
        value = query[name][0]
        if value:
            out += f"\n{name}:{value}"
    return out


def sign(key: str, text: str) -> str:
    """Return the base64 HMAC-SHA256 of ``text`` under the base64 account ``key``."""
    digest = hmac.new(base64.b64decode(key.encode()), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify(method: str, raw_path: str, headers: Mapping[str, str], account: str, key: str) -> str | None:
    """Check a request's ``Authorization: SharedKey account:signature`` header.

    Returns
    -------
    str or None
        None when the request is authentic, otherwise a one-line reason (never containing the key).
    """
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if not auth:
        return "The request is not authenticated: the Authorization header is missing."
    scheme, _, cred = auth.partition(" ")
    if scheme != "SharedKey" or ":" not in cred:
        return "Only SharedKey authorization is supported by the emulator."
    name, _, signature = cred.partition(":")
    if name != account:
        return f"The account name '{name}' in the Authorization header is not this account."
    expected = sign(key, string_to_sign(method, raw_path, headers, account))
    if not hmac.compare_digest(expected, signature):
        return (
            f"The MAC signature found in the HTTP request '{signature}' is not the same as any computed "
            "signature. Server used following string to sign: '"
            + string_to_sign(method, raw_path, headers, account).replace("\n", "\\n")
            + "'."
        )
    return None
