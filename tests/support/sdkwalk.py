"""Compare what the emulator stored with what the azure-batch 15.1 models make of its answer, field by field.

The SDK's models are generated from the service's TypeSpec and are what people's Batch code reads, so
they are the check: every field the emulator sends must be a field of the SDK's model (a made-up or
misnamed one is lost on the way), every value must come out equal, and every enum value must come out
as the SDK's enum type (a value the SDK does not know, ``creationTime`` for ``creationtime``, reaches
the caller as a plain string).

Examples
--------
In [1]: problems = compare(emu.state.get_pool("p"), client.get_pool("p"))

In [2]: problems
Out[2]: []
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import types
import typing
from typing import Any

__all__ = ["compare", "reachable", "visited_models", "enum_of", "model_hints", "SERVICE_SENDS"]

#: What the live service is recorded to send that the SDK 15.1 models lack or cannot map: the emulator
#: sends it too, and the SDK keeps it in the model's raw data only (or, for a value, as a plain string).
SERVICE_SENDS: dict[tuple[str, str], str] = {
    ("BatchPool", "targetNodeCommunicationMode"): "recorded: create_pools.json, update_pools.json",
    ("BatchPool", "currentNodeCommunicationMode"): "Microsoft's example Pools_GetPool_SecurityProfile.json",
    ("DataDisk", "storageAccountType"): "recorded: create_pools.json (GET pool batch_disk_...)",
    ("BatchPool", "resourceTags"): "the description's BatchPool; Pools_CreatePool_ResourceTags.json",
    ("BatchTaskSchedulingPolicy", "nodeFillType=Spread"): "recorded: create_pools.json answers 'Spread'",
}

#: The SDK model classes a comparison has walked through (for coverage checks).
visited_models: set[str] = set()


@functools.cache
def model_hints(cls: type) -> dict[str, Any]:
    """A model's resolved attribute types."""
    from azure.batch import models
    from azure.batch.models import _models

    return typing.get_type_hints(cls, {**vars(_models), "_models": models})


def _args(hint: Any) -> list[Any]:
    """The alternatives of an Optional/Union hint (the hint itself otherwise)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def enum_of(hint: Any) -> type[enum.Enum] | None:
    """The SDK enum a field's hint allows, if any (``Union[str, BatchNodeState]`` -> BatchNodeState)."""
    for arg in _args(hint):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return arg
    return None


def _model_of(hint: Any) -> type | None:
    from azure.batch._utils.model_base import Model

    for arg in _args(hint):
        if isinstance(arg, type) and issubclass(arg, Model):
            return arg
    return None


def _container(hint: Any) -> tuple[Any, Any] | None:
    for arg in _args(hint):
        origin = typing.get_origin(arg)
        if origin in (list, dict):
            return origin, typing.get_args(arg)[-1]
    return None


def compare(stored: Any, answer: Any, hint: Any = None, path: str = "") -> list[str]:
    """Differences between ``stored`` (wire JSON) and ``answer`` (the SDK's object), one line each."""
    if hint is None:
        hint = type(answer)
    model = _model_of(hint)
    if model is not None:
        return _compare_model(stored, answer, model, path)
    container = _container(hint)
    if container is not None:
        kind, item = container
        if kind is list:
            if not isinstance(stored, list) or len(stored) != len(answer or []):
                return [f"{path}: {stored!r} came back as {answer!r}"]
            return [
                p
                for i, (s, a) in enumerate(zip(stored, answer, strict=True))
                for p in compare(s, a, item, f"{path}[{i}]")
            ]
        if not isinstance(stored, dict):
            return [f"{path}: {stored!r} is not an object"]
        return [p for k, v in stored.items() for p in compare(v, (answer or {}).get(k), item, f"{path}.{k}")]
    return _compare_value(stored, answer, hint, path)


def reachable(models: list[type]) -> set[str]:
    """The names of every SDK model a value of one of ``models`` can hold, at any depth."""
    seen: set[str] = set()
    todo = list(models)
    while todo:
        model = todo.pop()
        if model.__name__ in seen:
            continue
        seen.add(model.__name__)
        for hint in model_hints(model).values():
            inner = _container(hint)
            target = _model_of(inner[1] if inner is not None else hint)
            if target is not None:
                todo.append(target)
    return seen


def _compare_model(stored: Any, answer: Any, model: type, path: str) -> list[str]:
    visited_models.add(model.__name__)
    if not isinstance(stored, dict):
        return [f"{path}: {stored!r} is not an object ({model.__name__})"]
    fields = {rf._rest_name: attr for attr, rf in model._attr_to_rest_field.items()}  # type: ignore[attr-defined]
    hints = model_hints(model)
    problems = []
    for key, value in stored.items():
        if key in ("odata.metadata",):
            continue
        attr = fields.get(key)
        if attr is None and (model.__name__, key) in SERVICE_SENDS:
            continue
        if attr is None:
            problems.append(f"{path}.{key}: not a property of {model.__name__} in azure-batch 15.1")
            continue
        if value is None:
            continue
        if isinstance(value, str) and (model.__name__, f"{key}={value}") in SERVICE_SENDS:
            continue
        problems += compare(value, getattr(answer, attr), hints[attr], f"{path}.{key}")
    return problems


def _compare_value(stored: Any, answer: Any, hint: Any, path: str) -> list[str]:
    kind = enum_of(hint)
    if kind is not None:
        if not isinstance(answer, kind):
            known = [v.value for v in kind]
            return [f"{path}: {stored!r} is not a value of {kind.__name__} {known}: the SDK gives a plain string"]
        return [] if answer.value == stored else [f"{path}: {stored!r} came back as {answer.value!r}"]
    types_ = _args(hint)
    if dt.datetime in types_:
        parsed = dt.datetime.fromisoformat(str(stored).replace("Z", "+00:00"))
        return [] if parsed == answer else [f"{path}: {stored!r} came back as {answer!r}"]
    if dt.timedelta in types_:
        return [] if isinstance(answer, dt.timedelta) else [f"{path}: duration {stored!r} came back as {answer!r}"]
    if bytes in types_:
        return [] if isinstance(answer, bytes) else [f"{path}: {stored!r} came back as {answer!r}"]
    return [] if answer == stored else [f"{path}: {stored!r} came back as {answer!r}"]
