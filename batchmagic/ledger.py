"""The client's ledger: every run and cloud resource this client created, appended as JSON lines.

It lives in ``BATCHMAGIC_HOME/ledger.jsonl`` so that what a kernel started can be found again
(by ``%azbatch_teardown --all`` today; by reattach after a restart later). Each client
(a kernel, a script) gets an id that is written into the metadata of what it creates.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["Ledger"]


class Ledger:
    def __init__(self, home: Path, *, client_id: str | None = None) -> None:
        self.path = Path(home) / "ledger.jsonl"
        self.client_id = client_id or uuid.uuid4().hex[:12]
        self._lock = threading.Lock()

    def record(self, event: str, run_id: str, **fields: Any) -> None:
        """Append one event (``submitted``, ``resource``, ``finished``, ``released``)."""
        line = json.dumps({"time": time.time(), "client": self.client_id, "event": event, "run": run_id, **fields})
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]
