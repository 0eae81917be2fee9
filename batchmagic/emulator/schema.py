"""Request validation driven by the service's own OpenAPI description (api-version 2025-06-01.21.0).

``spec_data.py`` holds a compact copy of Microsoft's ``BatchService.json`` (the 77 operations and every
model's properties, types, required fields and enums; descriptions left out), made by :func:`compact`.
:func:`validate` checks a request body against the operation's body model the way the service does:

- a body that is not a JSON object: 400 ``InvalidRequestBody``;
- a required property missing: 400 ``MissingRequiredProperty`` (``PropertyName``);
- a value of the wrong JSON type, or not one of its enum's values: 400 ``InvalidPropertyValue``
  (``PropertyName``, ``PropertyValue``), the same way for every resource.

Integers may come as JSON strings holding an integer (``"targetDedicatedNodes": "1"``): the Azure CLI
sends them so and the service's JSON reader accepts them; they are converted in place, so the state
machines only ever see ints. Booleans likewise accept ``"true"``/``"false"``. Enum values compare
case-insensitively (the service's enum parsing does), and are stored as the service spells them on the
wire (the description's spelling, except in :data:`WIRE_ENUMS`).
Read-only properties (``BatchJob.state`` in a ``PUT /jobs/{id}`` body) and properties the spec does
not know (a newer or older client's) are ignored, as the service ignores them.

To regenerate ``spec_data.py`` from a newer description::

    python -m batchmagic.emulator.schema path/to/BatchService.json > batchmagic/emulator/spec_data.py
"""

from __future__ import annotations

import functools
import json
import re
import sys
from dataclasses import dataclass
from typing import Any

from batchmagic.emulator.errors import ApiError, invalid_property, missing_property

__all__ = ["Operation", "operations", "models", "compact", "validate", "body_model", "path_regex", "render"]


@dataclass(frozen=True)
class Operation:
    """One REST operation of the service: ``Pools_ListPools`` is ``GET /pools``."""

    operation_id: str
    method: str
    path: str
    body: str | None
    """The request body's model name, or None when the operation takes no body."""


def _prop(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "$ref" in schema:
        out["ref"] = schema["$ref"].rsplit("/", 1)[-1]
    for key in ("type", "format", "enum"):
        if key in schema:
            out[key] = schema[key]
    if schema.get("readOnly"):
        out["readOnly"] = True
    if "items" in schema:
        out["items"] = _prop(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _prop(schema["additionalProperties"])
    return out


def compact(openapi: dict[str, Any]) -> dict[str, Any]:
    """The parts of an OpenAPI 2.0 description that routing and validation need.

    Returns
    -------
    dict
        ``{"version": ..., "operations": [[id, METHOD, path, body model or None], ...],
        "models": {name: {"type", "enum", "required", "properties": {name: property}}}}``.
    """
    operations: list[list[Any]] = []
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            body = next((p for p in op.get("parameters", []) if p.get("in") == "body"), None)
            model = body["schema"]["$ref"].rsplit("/", 1)[-1] if body else None
            operations.append([op["operationId"], method.upper(), path, model])
    models: dict[str, Any] = {}
    for name, schema in openapi["definitions"].items():
        entry: dict[str, Any] = {}
        for key in ("type", "enum", "required"):
            if key in schema:
                entry[key] = schema[key]
        if "properties" in schema:
            entry["properties"] = {k: _prop(v) for k, v in schema["properties"].items()}
        models[name] = entry
    return {"version": openapi["info"]["version"], "operations": operations, "models": models}


@functools.cache
def operations() -> tuple[Operation, ...]:
    """The service's operations, in the description's order."""
    from batchmagic.emulator.spec_data import SPEC

    return tuple(Operation(op_id, method, path, body) for op_id, method, path, body in SPEC["operations"])


#: Enums the live service spells otherwise than the description, with the values it sends and takes.
#: Recorded from the service and defined so by the azure-batch 15.1 models (generated from the service's
#: TypeSpec): ``jobDefaultOrder`` is ``creationtime`` and ``securityType`` ``confidentialvm`` (lower case),
#: and a host endpoint's ``mode`` is ``Audit`` or ``Enforce`` (the description's ``automatic``/``manual``
#: are not the service's; REST reference "HostEndpointSettingsModeTypes"). The SDK turns a value it
#: does not know into a plain string, so a re-spelt value reaches its caller as a string, not the enum.
#: tests/emulator/test_wire.py checks this table against the SDK's enums.
WIRE_ENUMS: dict[str, list[str]] = {
    "BatchJobDefaultOrder": ["none", "creationtime"],
    "SecurityTypes": ["trustedLaunch", "confidentialvm"],
    "HostEndpointSettingsModeTypes": ["Audit", "Enforce"],
}


@functools.cache
def models() -> dict[str, Any]:
    """The service's models by name (compacted, see :func:`compact`), enums spelt as on the wire."""
    from batchmagic.emulator.spec_data import SPEC

    found: dict[str, Any] = {name: dict(model) for name, model in SPEC["models"].items()}
    for name, values in WIRE_ENUMS.items():
        found[name]["enum"] = list(values)
    return found


def body_model(operation_id: str) -> str | None:
    """The body model of an operation (``Jobs_UpdateJob`` -> ``BatchJobUpdateOptions``)."""
    return next(op.body for op in operations() if op.operation_id == operation_id)


def path_regex(template: str) -> str:
    """A regular expression for a path template; ``{filePath}`` spans slashes, other parameters do not."""
    out = ""
    for part in re.split(r"(\{[^}]+\})", template):
        if part.startswith("{"):
            out += "(.+)" if part == "{filePath}" else "([^/]+)"
        else:
            out += re.escape(part)
    return out


#: Required properties the emulator does not insist on. azure-batch 15.1's BatchPoolReplaceOptions has
#: no certificate_references, so its replace_pool_properties could never succeed if the description's
#: ``required`` were enforced; certificates are retired for pools anyway.
NOT_ENFORCED = frozenset({("BatchPoolReplaceOptions", "certificateReferences")})


class _Invalid(Exception):
    def __init__(self, error: ApiError) -> None:
        self.error = error


def validate(operation_id: str, body: Any) -> None:
    """Check (and normalise in place) a request body against its operation's model.

    Raises
    ------
    ApiError
        400 ``InvalidRequestBody``, ``MissingRequiredProperty`` or ``InvalidPropertyValue``.
    """
    model = body_model(operation_id)
    if model is None:
        return
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidRequestBody")
    try:
        _check_model(model, body, "")
    except _Invalid as exc:
        raise exc.error from None


def _check_model(name: str, value: dict[str, Any], path: str) -> None:
    model = models()[name]
    props: dict[str, Any] = model.get("properties", {})
    for req in model.get("required", []):
        if (name, req) in NOT_ENFORCED:
            continue
        if value.get(req) is None and not props.get(req, {}).get("readOnly"):
            raise _Invalid(missing_property(path + req))
    for key in list(value):
        spec = props.get(key)
        if spec is None or spec.get("readOnly") or value[key] is None:
            continue
        value[key] = _check(spec, value[key], path + key)


def _check(spec: dict[str, Any], value: Any, name: str) -> Any:
    if "ref" in spec:
        target = models()[spec["ref"]]
        if "properties" in target or target.get("type") == "object":
            if not isinstance(value, dict):
                raise _Invalid(invalid_property(name, _show(value)))
            _check_model(spec["ref"], value, name + ".")
            return value
        return _check(target, value, name)
    kind = spec.get("type")
    if "enum" in spec:
        if not isinstance(value, str):
            raise _Invalid(invalid_property(name, _show(value)))
        for allowed in spec["enum"]:
            if str(allowed).lower() == value.lower():
                return allowed
        raise _Invalid(invalid_property(name, value))
    if kind in ("integer", "number", "boolean"):
        return _check_scalar(kind, value, name)
    if kind == "string":
        if not isinstance(value, str):
            raise _Invalid(invalid_property(name, _show(value)))
        return value
    if kind == "array":
        if not isinstance(value, list):
            raise _Invalid(invalid_property(name, _show(value)))
        item = spec.get("items") or {}
        return [_check(item, v, name) if v is not None else v for v in value]
    if kind == "object":
        if not isinstance(value, dict):
            raise _Invalid(invalid_property(name, _show(value)))
        extra = spec.get("additionalProperties")
        if extra:
            for k in list(value):
                value[k] = _check(extra, value[k], f"{name}.{k}")
        return value
    return value


def _check_scalar(kind: str, value: Any, name: str) -> Any:
    """An integer, number or boolean, converted from the strings the service's JSON reader accepts."""
    if kind == "integer":
        if isinstance(value, bool):
            raise _Invalid(invalid_property(name, _show(value)))
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Invalid(invalid_property(name, _show(value)))
    if kind == "number":
        if isinstance(value, bool):
            raise _Invalid(invalid_property(name, _show(value)))
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _Invalid(invalid_property(name, _show(value)))
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _Invalid(invalid_property(name, _show(value)))
    raise _Invalid(invalid_property(name, _show(value)))


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def main(argv: list[str] | None = None) -> int:
    """Print a ``spec_data.py`` made from a ``BatchService.json``."""
    args = sys.argv[1:] if argv is None else argv
    with open(args[0], encoding="utf-8") as fh:
        spec = compact(json.load(fh))
    print(render(spec), end="")
    return 0


def render(spec: dict[str, Any]) -> str:
    """``spec_data.py``'s text for a compacted description."""
    lines = [
        "# ruff: noqa: E501",
        '"""A compact copy of the Azure Batch data-plane OpenAPI description, api-version ' + spec["version"] + ".",
        "",
        "Generated by ``python -m batchmagic.emulator.schema BatchService.json`` from Microsoft's",
        "azure-rest-api-specs (specification/batch/data-plane/Azure.Batch/stable; MIT licence, copyright",
        "Microsoft): operations, models, properties, types, required fields and enums. Do not edit by hand.",
        '"""',
        "",
        "from typing import Any",
        "",
        "# fmt: off",
        "SPEC: dict[str, Any] = {",
        f'    "version": {spec["version"]!r},',
        '    "operations": [',
    ]
    lines += [f"        {op!r}," for op in spec["operations"]]
    lines += ["    ],", '    "models": {']
    for name, model in spec["models"].items():
        lines.append(f"        {name!r}: {{")
        for key, value in model.items():
            if key == "properties":
                lines.append('            "properties": {')
                lines += [f"                {pname!r}: {pspec!r}," for pname, pspec in value.items()]
                lines.append("            },")
            else:
                lines.append(f"            {key!r}: {value!r},")
        lines.append("        },")
    lines += ["    },", "}", "# fmt: on"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
