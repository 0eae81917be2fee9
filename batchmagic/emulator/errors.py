"""Batch service errors as the emulator raises them: an HTTP status, a code, a message and details."""

from __future__ import annotations

__all__ = ["ApiError", "not_found", "exists", "invalid_property", "missing_property"]

_MESSAGES: dict[str, str] = {
    "PoolNotFound": "The specified pool does not exist.",
    "JobNotFound": "The specified job does not exist.",
    "TaskNotFound": "The specified task does not exist.",
    "NodeNotFound": "The specified node does not exist.",
    "JobScheduleNotFound": "The specified job schedule does not exist.",
    "FileNotFound": "The specified file does not exist.",
    "ResourceNotFound": "The specified resource does not exist.",
    "PoolExists": "The specified pool already exists.",
    "JobExists": "The specified job already exists.",
    "TaskExists": "The specified task already exists.",
    "JobCompleted": "The specified job is already in a completed state.",
    "JobBeingDeleted": "The specified job has been marked for deletion and is being garbage collected.",
    "JobBeingTerminated": "The specified job is being terminated.",
    "PoolBeingDeleted": "The specified pool has been marked for deletion and is being reclaimed.",
    "TaskCompleted": "The specified task is already in completed state.",
    "JobPreparationTaskNotSpecified": "The specified job does not have a job preparation or job release task.",
    "JobNotActive": "The specified job is not active.",
    "OperationInvalidForCurrentState": "The specified operation is not valid for the current state of the resource.",
    "JobScheduleCompleted": "The specified job schedule is already in completed state.",
    "JobScheduleBeingTerminated": "The specified job schedule is being terminated.",
    "JobScheduleBeingDeleted": "The specified job schedule has been marked for deletion and is being reclaimed.",
    "JobScheduleExists": "The specified job schedule already exists.",
    "CertificateNotFound": "The specified certificate does not exist.",
    "CertificateExists": "The specified certificate already exists.",
    "ApplicationNotFound": "The specified application does not exist.",
    "NodeExtensionNotFound": "The specified node extension does not exist.",
    "InvalidPropertyValue": "The value provided for one of the properties in the request body is invalid.",
    "MissingRequiredProperty": "A required property was not specified in the request body.",
    "InvalidRequestBody": "The specified Request Body is not syntactically valid.",
    "InvalidQueryParameterValue": "Value for one of the query parameters specified in the request URI is invalid.",
    "MissingRequiredQueryParameter": "A query parameter that's mandatory for this request is not specified.",
    "AuthenticationFailed": (
        "Server failed to authenticate the request. Make sure the value of Authorization header is correctly "
        "formed including the signature."
    ),
    "OperationNotValidOnNode": "The specified operation is not valid on the node.",
    "RequestBodyTooLarge": "The request body is too large and exceeds the maximum permissible limit.",
    "UnsupportedHttpVerb": "The resource doesn't support the specified HTTP verb.",
    "TaskDependenciesNotSpecifiedOnJob": "The task has dependencies but its job does not use task dependencies.",
    "ConditionNotMet": "The condition specified using HTTP conditional header(s) is not met.",
    "InternalError": "Server encountered an internal error. Please try again after some time.",
    "InvalidAutoScalingSettings": "The specified auto-scaling settings are not valid.",
    "AutoScalingFormulaSyntaxError": "The specified auto-scaling formula has a syntax error.",
    "AutoScalingFormulaTooLong": "The specified auto-scaling formula exceeds lengths limit.",
    "OperationNotValidOnPool": "The specified operation is not valid on the pool.",
    "PoolBeingResized": "The specified pool is being resized",
    "NodeUserNotFound": "The specified node user does not exist.",
    "NodeUserExists": "The specified node user already exists.",
    "NodeBeingCreated": "The specified node is being created",
    "NodeBeingStarted": "The specified node is being started",
    "NodeBeingRebooted": "The specified node is being rebooted",
    "NodeBeingReimaged": "The specified node is being reimaged",
    "NodeStateUnusable": "The state of the specified node is unusable",
    "NodeAlreadyInTargetSchedulingState": "The specified node is already in the target scheduling state.",
}


class ApiError(Exception):
    """An error the emulator answers with an OData error body.

    Parameters
    ----------
    status : int
        HTTP status code.
    code : str
        The Batch error code, e.g. ``"PoolNotFound"``.
    message : str, optional
        The human message; defaults to the service's standard text for ``code``.
    values : list of (str, str), optional
        Detail pairs, rendered as ``{"key": ..., "value": ...}`` items.
    """

    def __init__(
        self, status: int, code: str, message: str | None = None, values: list[tuple[str, str]] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message or _MESSAGES.get(code, code)
        self.values = list(values or [])
        super().__init__(f"{status} {code}: {self.message}")


def not_found(code: str) -> ApiError:
    """A 404 error with the standard message for ``code`` (``PoolNotFound``, ``JobNotFound``, ...)."""
    return ApiError(404, code)


def exists(code: str) -> ApiError:
    """A 409 error with the standard message for ``code`` (``PoolExists``, ``JobExists``, ...)."""
    return ApiError(409, code)


def invalid_property(name: str, value: object, reason: str | None = None) -> ApiError:
    """A 400 ``InvalidPropertyValue`` naming the property, its value and, optionally, why."""
    values = [("PropertyName", name), ("PropertyValue", str(value))]
    if reason:
        values.append(("Reason", reason))
    return ApiError(400, "InvalidPropertyValue", values=values)


def missing_property(name: str) -> ApiError:
    """A 400 ``MissingRequiredProperty`` naming the property."""
    return ApiError(400, "MissingRequiredProperty", values=[("PropertyName", name)])
