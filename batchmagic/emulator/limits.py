"""The string and size limits the service documents, and the error each is answered with.

- Ids of pools, jobs, tasks and job schedules: "any combination of alphanumeric characters including
  hyphens and underscores, and cannot contain more than 64 characters"; a bad one is a 400
  ``InvalidPropertyValue`` naming ``id``. They are case-preserving and case-insensitive: "you may not have
  two IDs within an Account that differ only by case", so a second one is ``PoolExists``/``JobExists``/...
- ``displayName``: "any Unicode characters up to a maximum length of 1024": a longer one is a 400
  ``InvalidPropertyValue``.
- A task collection: at most 100 tasks, and a body under 1 MB, else 413 ``RequestBodyTooLarge``
  (``server.MAX_TASK_COLLECTION_BYTES``).
- Metadata: the service documents no limit on names, values or count; none is enforced here.

(REST reference: the ``id`` and ``displayName`` properties of BatchPoolCreateOptions,
BatchJobCreateOptions, BatchTaskCreateOptions, BatchJobScheduleCreateOptions; BatchTaskGroup.value.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from batchmagic.emulator.errors import invalid_property, missing_property

__all__ = ["MAX_ID", "MAX_DISPLAY_NAME", "MAX_TASKS_PER_COLLECTION", "check_id", "check_display_name", "taken"]

MAX_ID = 64
MAX_DISPLAY_NAME = 1024
MAX_TASKS_PER_COLLECTION = 100
_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_ID}}}")


def check_id(body: dict[str, Any], pattern: re.Pattern[str] = _ID) -> str:
    """The body's ``id``, or a 400 when it is missing or not a valid id."""
    value = body.get("id")
    if not value:
        raise missing_property("id")
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise invalid_property("id", value)
    return value


def check_display_name(body: dict[str, Any]) -> None:
    """A 400 when the body's ``displayName`` is longer than the service takes."""
    name = body.get("displayName")
    if isinstance(name, str) and len(name) > MAX_DISPLAY_NAME:
        raise invalid_property("displayName", f"({len(name)} characters)", "At most 1024 characters.")


def taken(existing: Iterable[str], new_id: str) -> bool:
    """Whether ``new_id`` names an existing resource, ignoring case as the service does."""
    folded = new_id.casefold()
    return any(key.casefold() == folded for key in existing)
