"""Injected faults (``--faults SPEC``): what a flaky network and a busy service do to requests.

SPEC is a comma-separated list of rules, ``KIND[=ARG]:RATE[@[METHOD]PATH_REGEX]``:

- ``503:0.05`` (any status code): answer 5 % of requests with that status and the service's error body,
  without handling them (``429`` and ``503`` carry ``Retry-After: ARG`` seconds, default 1);
- ``reset-before:0.05``: close the connection with a TCP reset before handling the request (nothing
  happened; the client sees a connection error);
- ``reset-after:0.05``: handle the request, then reset the connection instead of answering (it
  happened; the client cannot know);
- ``delay=2:0.05``: wait 2 seconds, then handle and answer as usual;
- ``seed=N``: make the draws repeatable.

``@POST/jobs/[^/]+/tasks`` limits a rule to that method and path (regular expression, full match on the
path); ``@/jobs.*`` to a path, any method. One draw per request: the first rule whose rate it falls
under applies. Examples: ``--faults 'reset-before:0.04,reset-after:0.04,503:0.04,429=1:0.03'``.
"""

from __future__ import annotations

import logging
import random
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Fault", "FaultPlan"]

log = logging.getLogger("batchmagic.emulator.faults")

_RULE = re.compile(
    r"^(?P<kind>\d{3}|reset-before|reset-after|delay)(?:=(?P<arg>[0-9.]+))?:(?P<rate>[0-9.]+)"
    r"(?:@(?P<method>[A-Z]+)?(?P<path>/.*)?)?$"
)


@dataclass(frozen=True)
class Fault:
    kind: str  # "503", "reset-before", "reset-after", "delay"
    rate: float
    arg: float | None = None
    method: str = ""
    path: re.Pattern[str] | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method and method != self.method:
            return False
        return self.path is None or bool(self.path.fullmatch(path))


class FaultPlan:
    """The rules of a ``--faults`` SPEC, and how often each has struck (``counts``)."""

    def __init__(self, rules: list[Fault], seed: int | None = None) -> None:
        self.rules = rules
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """Read a SPEC; ValueError names the rule it cannot read."""
        rules: list[Fault] = []
        seed = None
        for text in filter(None, (part.strip() for part in spec.split(","))):
            if text.startswith("seed="):
                seed = int(text[5:])
                continue
            match = _RULE.match(text)
            if not match:
                raise ValueError(f"--faults rule {text!r} is not KIND[=ARG]:RATE[@[METHOD]PATH]")
            rate = float(match["rate"])
            if not 0 <= rate <= 1:
                raise ValueError(f"--faults rule {text!r}: the rate must be between 0 and 1")
            path = match["path"]
            rules.append(
                Fault(
                    kind=match["kind"],
                    rate=rate,
                    arg=float(match["arg"]) if match["arg"] else None,
                    method=match["method"] or "",
                    path=re.compile(path) if path else None,
                )
            )
        return cls(rules, seed)

    def pick(self, method: str, path: str) -> Fault | None:
        """The fault this request suffers, if any (one draw per request)."""
        with self._lock:
            draw = self._random.random()
        edge = 0.0
        for rule in self.rules:
            if not rule.matches(method, path):
                continue
            edge += rule.rate
            if draw < edge:
                with self._lock:
                    self.counts[rule.kind] = self.counts.get(rule.kind, 0) + 1
                log.info("injected fault %s on %s %s", rule.kind, method, path)
                return rule
        return None


def reset(handler: Any) -> None:
    """Close the handler's connection with a TCP reset (SO_LINGER 0), as a dropped connection looks."""
    handler.close_connection = True
    try:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
    except OSError:
        pass


def before(handler: Any, fault: Fault | None, body_length: int) -> bool:
    """Apply ``fault`` before the request is handled; True when the request is answered (or dropped)
    here and must not be handled."""
    if fault is None or fault.kind == "reset-after":
        return False
    if fault.kind == "delay":
        time.sleep(fault.arg if fault.arg is not None else 1.0)
        return False
    if body_length:
        handler.rfile.read(body_length)
    if fault.kind == "reset-before":
        reset(handler)
        return True
    status = int(fault.kind)
    code = {429: "TooManyRequests", 500: "InternalError", 503: "ServerBusy"}.get(status, "InjectedFault")
    payload = (
        '{"code": "%s", "message": {"lang": "en-US", "value": "injected by --faults"}}' % code  # noqa: UP031
    ).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json;odata=minimalmetadata")
    handler.send_header("Content-Length", str(len(payload)))
    if status in (429, 503):
        handler.send_header("Retry-After", str(int(fault.arg if fault.arg is not None else 1)))
    handler.end_headers()
    handler.wfile.write(payload)
    return True
