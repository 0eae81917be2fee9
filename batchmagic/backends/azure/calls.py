"""The thin layer of calls to Azure Batch: retries, and azure-core errors translated into ours.

Everything that talks to the service goes through :meth:`BatchCalls.call` (or
:meth:`BatchCalls.pool_call`, whose errors speak of a named pool), so that what is transient is
retried in one place and every error the user sees is one line (:class:`~batchmagic.errors.ConfigError`
for what they can fix, :class:`~batchmagic.errors.RunFailed` for the rest), raised ``from`` the SDK's.
The clients themselves are made here too, from the settings (:func:`batch_client`, :func:`blob_store`).
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar, cast

from batchmagic.config import Settings
from batchmagic.errors import ConfigError, RunFailed
from batchmagic.storage import BlobStore

__all__ = ["BatchCalls", "batch_client", "blob_store", "code", "first_line", "message", "storage_code"]

log = logging.getLogger("batchmagic.backends.azure")

T = TypeVar("T")
#: Retries' jitter draws from a generator of its own, not the notebook's seeded global one (run.monitor).
_JITTER = random.Random()
TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
RETRIES = 8
#: Retries in a :meth:`BatchCalls.brief` block: the SDK has retried a failed connection three times itself.
BRIEF_RETRIES = 1


class BatchCalls:
    """A Batch client's calls, retried and translated (see the module docstring)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._brief = threading.local()

    @contextmanager
    def brief(self) -> Iterator[None]:
        """Calls this thread makes in the block retry at most ``BRIEF_RETRIES`` times: for what a user waits
        on (a teardown, a listing), where "could not reach Azure Batch" in seconds beats it after minutes.
        The runs' monitors, in their own threads, keep their patience through an outage."""
        before = getattr(self._brief, "on", False)
        self._brief.on = True
        try:
            yield
        finally:
            self._brief.on = before

    def call(self, fn: Callable[[], T], what: str, *, accept: Callable[[Any], bool] | None = None) -> T:
        """Call Batch, retrying what is transient, and translate azure-core errors into ours, at the boundary.

        Retried (``RETRIES`` times, backing off with jitter, after ``Retry-After`` when the service gives
        one): a connection that failed or was reset before or after the answer, 408, 429 and 5xx. The
        SDK retries none of these for a POST without Retry-After, and a reset after the answer means the
        call may have happened: so every call that creates must be safe to repeat, and ``accept(err)``
        says when an error is success (the job exists already and is ours; the task exists already).
        """
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        retries = BRIEF_RETRIES if getattr(self._brief, "on", False) else RETRIES
        attempt = 0
        while True:
            try:
                return fn()
            except HttpResponseError as err:
                if accept is not None and accept(err):
                    return cast(T, None)
                status = getattr(err, "status_code", None)
                # No status: no answer came (create_tasks reports a chunk's dropped connection this way).
                if (status in TRANSIENT or status is None) and attempt < retries:
                    attempt += 1
                    log.info("%s: %s, retrying (%d of %d)", what, status, attempt, retries)
                    time.sleep(retry_after(err) or backoff(attempt))
                    continue
                raise _translated(err, status, what) from err
            except (ServiceRequestError, ServiceResponseError) as err:
                if attempt < retries:
                    attempt += 1
                    log.info("%s: %s, retrying (%d of %d)", what, first_line(err), attempt, retries)
                    time.sleep(backoff(attempt))
                    continue
                raise RunFailed(f"could not reach Azure Batch to {what}: {first_line(err)}") from err

    def pool_call(self, fn: Callable[[], T], name: str, verb: str) -> T:
        """A call on a named pool, its errors in the pool's terms."""
        from azure.core.exceptions import HttpResponseError

        try:
            return fn()
        except HttpResponseError as err:
            error = code(err)
            if error == "PoolNotFound" or getattr(err, "status_code", None) == 404:
                raise ConfigError(
                    f"there is no pool {name}: create it with %azbatch_pool create {name} --vm SIZE "
                    "(batchmagic pool create in a terminal); %azbatch_pool ls lists them"
                ) from err
            if error == "PoolExists":
                raise ConfigError(f"pool {name} already exists: %azbatch_pool ls shows it; pick another name") from err
            if error == "PoolBeingDeleted":
                raise ConfigError(f"pool {name} is being deleted: wait a minute, or pick another name") from err
            failure = err
            self.call(lambda: _reraise(failure), f"{verb} pool {name}")  # translated as any other call's error
            raise


def _translated(err: Any, status: int | None, what: str) -> Exception:
    """The one-line error a refused call becomes."""
    error = code(err)
    if status in (401, 403):
        return ConfigError(f"Azure Batch refused to {what} ({error}): check the Batch credentials")
    if status == 400:
        return ConfigError(f"Azure Batch refused to {what}: {error}: {message(err)}")
    return RunFailed(f"could not {what}: {error or status}: {message(err)}")


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1, 2...): 0.5, 1, 2, 4, 8 at most, each with up to 50 % jitter."""
    return float(min(8.0, 0.25 * 2.0**attempt)) * (1 + _JITTER.random() / 2)


def retry_after(err: Any) -> float:
    """The service's ``Retry-After``, in seconds (at most a minute); 0 when it gave none."""
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        return float(min(60.0, float(headers.get("Retry-After", 0) or 0)))
    except (TypeError, ValueError):
        return 0.0


def first_line(err: BaseException) -> str:
    """An exception's first line, or its class name when it says nothing."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def storage_code(err: Any) -> str:
    """Blob Storage's error code (the SDK keeps it on the exception), else the status and first line."""
    error = getattr(err, "error_code", None)
    if error:
        return str(getattr(error, "value", error))
    return f"HTTP {getattr(err, 'status_code', '?')}: {first_line(err)}"


def code(err: Any) -> str:
    """Batch's error code, from the error body (not the HTTP status)."""
    error = getattr(err, "error", None)
    return getattr(error, "code", None) or ""


def message(err: Any) -> str:
    """Batch's error message, its first line."""
    error = getattr(err, "error", None)
    text = getattr(error, "message", None) or str(err)
    return str(text).split("\n")[0]


def _reraise(err: BaseException) -> NoReturn:
    raise err


def batch_client(settings: Settings) -> Any:
    """The Batch client: a shared key when one is set, else Entra ID (``DefaultAzureCredential``)."""
    from azure.batch import BatchClient

    key = settings.secrets.batch_key
    if key:
        try:
            base64.b64decode(key, validate=True)
        except ValueError:  # binascii.Error: the SDK would fail on every request with a traceback
            raise ConfigError(
                "AZURE_BATCH_ACCESS_KEY is not a base64 key: copy the account's key again "
                "(az batch account keys list, or the portal's Keys blade)"
            ) from None
        if not settings.batch_account:
            raise ConfigError("AZURE_BATCH_ACCOUNT is not set: export the Batch account name to go with its key")
        from azure.core.credentials import AzureNamedKeyCredential

        credential: Any = AzureNamedKeyCredential(settings.batch_account, key)
    else:
        if settings.batch_endpoint.startswith("http://"):
            raise ConfigError(
                "AZURE_BATCH_ACCESS_KEY is not set, and Entra ID tokens need an https endpoint: set the key"
            )
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    logging.getLogger("azure.batch._utils.model_base").setLevel(logging.ERROR)
    return BatchClient(settings.batch_endpoint.rstrip("/"), credential)


def blob_store(settings: Settings) -> BlobStore:
    """The run store in Blob Storage: a connection string, else the account URL with Entra ID."""
    connection = settings.secrets.storage_connection_string
    try:
        if connection:
            return BlobStore.from_connection_string(connection, settings.container, patience=settings.storage_patience)
        if settings.storage_account_url:
            from azure.identity import DefaultAzureCredential

            return BlobStore.from_account_url(
                settings.storage_account_url,
                settings.container,
                DefaultAzureCredential(),
                patience=settings.storage_patience,
            )
    except ValueError as err:
        variable = "AZURE_STORAGE_CONNECTION_STRING" if connection else "AZURE_STORAGE_ACCOUNT_URL"
        raise ConfigError(f"{variable} is not usable: {err}") from None
    raise ConfigError(
        "no Blob Storage configured: export AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_URL "
        "(with az login) for the account that holds run data"
    )
