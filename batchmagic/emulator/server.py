"""The Batch emulator's HTTP front end: routing, SharedKey checks, OData bodies, headers, recording.

Examples
--------
In [1]: from batchmagic.emulator.server import Emulator

In [2]: emu = Emulator(account="devbatch", key=KEY, allocation_delay=0.2).start()

In [3]: client = BatchClient(emu.url, AzureNamedKeyCredential("devbatch", KEY))

In [4]: emu.stop()
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from batchmagic.emulator import auth, faults, schema
from batchmagic.emulator.clock import Clock
from batchmagic.emulator.errors import ApiError, invalid_property, not_found
from batchmagic.emulator.executors import make_executor
from batchmagic.emulator.images import SUPPORTED_IMAGES
from batchmagic.emulator.limits import MAX_TASKS_PER_COLLECTION
from batchmagic.emulator.odata import apply_select, compile_filter
from batchmagic.emulator.state import BatchState, environ_path_dir, iso, rfc1123
from batchmagic.emulator.state.endpoints import node_extensions, remote_login_settings
from batchmagic.emulator.state.persist import saved_time

__all__ = ["Emulator", "SUPPORTED_IMAGES", "DEFAULT_KEY", "API_VERSIONS"]

log = logging.getLogger("batchmagic.emulator")

#: A throwaway key for tests and demos (base64, as Batch keys are). Never a real account's key.
DEFAULT_KEY = base64.b64encode(b"batchmagic-emulator-test-key-000").decode()

_JSON = "application/json; odata=minimalmetadata"

#: The api-versions the service accepts: what azure-batch 15.1 (2025-06-01) and every earlier SDK from
#: about 6.0 send (11.0 sends 2021-06-01.14.0, 14.2 sends 2024-02-01.19.0, 15.0 and the Azure CLI's
#: 15.0.0b1 send 2024-07-01.20.0). Another value is answered 400 InvalidQueryParameterValue, as the
#: service answers it.
API_VERSIONS = frozenset(
    {
        "2025-06-01",
        "2025-06-01.21.0",
        "2024-07-01",
        "2024-07-01.20.0",
        "2024-02-01.19.0",
        "2023-11-01.18.0",
        "2023-05-01.17.0",
        "2022-10-01.16.0",
        "2022-01-01.15.0",
        "2021-06-01.14.0",
        "2020-09-01.12.0",
        "2020-03-01.11.0",
        "2019-08-01.10.0",
        "2019-06-01.9.0",
        "2018-12-01.8.0",
        "2018-08-01.7.0",
        "2018-03-01.6.1",
        "2017-09-01.6.0",
        "2017-06-01.5.1",
        "2017-05-01.5.0",
    }
)
_MAX_RESULTS = 1000
_QUERY_SAFE = "$'(),/:"


#: The largest ``addtaskcollection`` body the service takes (REST reference, Tasks - Create Task
#: Collection: "The total serialized size of this collection must be less than 1MB. If it is greater
#: than 1MB ... the request will fail with code 'RequestBodyTooLarge'"). The SDK's ``create_tasks``
#: splits its chunk in two when it reads that code.
MAX_TASK_COLLECTION_BYTES = 1024 * 1024


class _Response:
    """What a route handler answers: status, JSON body (or raw bytes) and extra headers."""

    def __init__(
        self,
        status: int = 200,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.raw = raw
        self.content_type = content_type


class _Request:
    def __init__(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body

    def q(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == name), None)


Handler = Callable[..., _Response]


class Emulator:
    """An Azure Batch service emulator speaking REST api-version 2025-06-01 to the azure-batch SDK.

    Parameters
    ----------
    host : str
        Interface to listen on.
    port : int
        Port to listen on; 0 picks a free one (see ``url`` after ``start``).
    account : str
        The Batch account name clients sign with.
    key : str
        The account's base64 shared key; requests signed with another key get 403 AuthenticationFailed.
    executor : str
        ``"process"`` (run command lines on this host) or ``"docker"`` (container tasks in Docker).
    allocation_delay : float
        Seconds from a pool (re)size until its nodes are idle and the pool is steady.
    core_quota : int, optional
        Dedicated core quota of the account; pools beyond it get ``AccountCoreQuotaReached`` resize errors.
    low_priority_core_quota : int, optional
        Low-priority core quota; unlimited when None.
    family_quotas : dict, optional
        Dedicated core quotas per VM family (lower-case family name -> cores); pools beyond one get
        ``AccountVMFamilyCoreQuotaReached`` resize errors.
    record : str or Path, optional
        A JSON Lines file receiving every request (method, path, query, headers, body, status).
    workdir : str or Path, optional
        Where node and task directories live; a temporary directory (removed on stop) when None.
    empty_job_grace : float
        Seconds a ``terminatejob`` job with no tasks waits before completing.
    state_dir : str or Path, optional
        ``--state``: keep the account there (saved while running, restored on start) and, unless
        ``workdir`` is given, the node and task files too (``<state_dir>/work``).
    time_scale : float
        How much faster than real time the emulator's clock runs (allocation delays, autoscale
        intervals, idle periods, schedules and every timestamp reported); 1 is real time.
    subscription : str, optional
        The account's subscription id: a pool's ``subnetId`` and ``virtualMachineImageId`` must be in it.
        By default a fixed UUID derived from the account name (``emu.state.subscription``).

    Examples
    --------
    In [1]: with Emulator(key=DEFAULT_KEY, allocation_delay=0.2) as emu:
       ...:     print(emu.url, len(emu.state.pools))
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        account: str = "devbatch",
        key: str = DEFAULT_KEY,
        *,
        executor: str = "process",
        allocation_delay: float = 1.0,
        core_quota: int | None = None,
        low_priority_core_quota: int | None = None,
        family_quotas: dict[str, int] | None = None,
        record: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        empty_job_grace: float = 5.0,
        time_scale: float = 1.0,
        state_dir: str | os.PathLike[str] | None = None,
        subscription: str | None = None,
    ) -> None:
        base64.b64decode(key.encode(), validate=True)  # fail early on a key the SDK could not use either
        self.host = host
        self.account = account
        self._key = key
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if workdir is None and self.state_dir is not None:
            workdir = self.state_dir / "work"  # node and task files outlive a restart with the account
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="batchemu-"))
        self.record_path = Path(record) if record is not None else None
        self.faults: faults.FaultPlan | None = None  # --faults: injected by the request handler
        self._record_lock = threading.Lock()
        self._record_file: Any = None
        self._httpd = ThreadingHTTPServer((host, port), _RequestHandler)
        self._httpd.daemon_threads = True
        self._httpd.emulator = self  # type: ignore[attr-defined]
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self.state = BatchState(
            account=account,
            url=self.url,
            workdir=self.workdir,
            executor=make_executor(executor, environ_path_dir(sys.executable)),
            allocation_delay=allocation_delay,
            core_quota=core_quota,
            low_priority_core_quota=low_priority_core_quota,
            family_quotas=family_quotas,
            empty_job_grace=empty_job_grace,
            clock=Clock(time_scale, origin=saved_time(self.state_dir) if self.state_dir is not None else None),
            state_dir=self.state_dir,
            subscription=subscription,
        )
        self._thread: threading.Thread | None = None
        self._routes = self._build_routes()

    def __repr__(self) -> str:
        return f"Emulator(url={self.url!r}, account={self.account!r})"

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Emulator:
        """Start serving in a background thread; returns self."""
        if self.record_path is not None:
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            self._record_file = open(self.record_path, "a", encoding="utf-8")  # noqa: SIM115
        self.state.start()
        # A short poll: stop() (every emulator's end: each test that starts one) waits out one poll.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="batch-emulator-http", daemon=True
        )
        self._thread.start()
        log.info("batch emulator listening on %s", self.url)
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop`` is called from another thread (or Ctrl-C)."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving, kill running tasks, stop the scheduler and close the record file."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread = None
        self._httpd.server_close()
        self.state.stop()
        with self._record_lock:
            if self._record_file is not None:
                self._record_file.close()
                self._record_file = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ----------------------------------------------------------------- plumbing
    def _verify(self, method: str, raw_path: str, headers: dict[str, str]) -> str | None:
        return auth.verify(method, raw_path, headers, self.account, self._key)

    def _record(self, entry: dict[str, Any]) -> None:
        with self._record_lock:
            if self._record_file is not None:
                self._record_file.write(json.dumps(entry) + "\n")
                self._record_file.flush()

    def _handlers(self) -> dict[str, Handler]:
        """Operation id (as in the service's OpenAPI description) -> handler.

        Every operation of the description is routed: one missing here answers 501 ``NotImplemented``
        naming it (see :meth:`_not_implemented`), never a 404 route miss. Add an operation by adding a
        line.
        """
        return {
            "Applications_ListApplications": self._list_applications,
            "Applications_GetApplication": self._get_application,
            "Certificates_ListCertificates": self._list_certificates,
            "Certificates_CreateCertificate": self._create_certificate,
            "Certificates_GetCertificate": self._get_certificate,
            "Certificates_DeleteCertificate": self._delete_certificate,
            "Certificates_CancelCertificateDeletion": self._cancel_certificate_deletion,
            "Pools_ListPools": self._list_pools,
            "Pools_CreatePool": self._create_pool,
            "Pools_GetPool": self._get_pool,
            "Pools_PoolExists": self._head_pool,
            "Pools_UpdatePool": self._patch_pool,
            "Pools_DeletePool": self._delete_pool,
            "Pools_ResizePool": self._resize_pool,
            "Pools_StopPoolResize": self._stop_resize,
            "Pools_ReplacePoolProperties": self._update_pool_properties,
            "Pools_ListPoolNodeCounts": self._node_counts,
            "Pools_ListSupportedImages": self._supported_images,
            "Pools_ListPoolUsageMetrics": self._pool_usage_metrics,
            "Pools_EnablePoolAutoScale": self._enable_autoscale,
            "Pools_DisablePoolAutoScale": self._disable_autoscale,
            "Pools_EvaluatePoolAutoScale": self._evaluate_autoscale,
            "Nodes_ListNodes": self._list_nodes,
            "Nodes_GetNode": self._get_node,
            "Nodes_GetNodeRemoteLoginSettings": self._remote_login_settings,
            "Nodes_ListNodeExtensions": self._list_node_extensions,
            "Nodes_GetNodeExtension": self._get_node_extension,
            "Nodes_UploadNodeLogs": self._upload_node_logs,
            "Nodes_ListNodeFiles": self._list_node_files,
            "Nodes_GetNodeFile": self._get_node_file,
            "Nodes_GetNodeFileProperties": self._get_node_file,
            "Nodes_DeleteNodeFile": self._delete_node_file,
            "Pools_RemoveNodes": self._remove_nodes,
            "Nodes_RebootNode": self._reboot_node,
            "Nodes_ReimageNode": self._reimage_node,
            "Nodes_DisableNodeScheduling": self._disable_scheduling,
            "Nodes_EnableNodeScheduling": self._enable_scheduling,
            "Nodes_CreateNodeUser": self._add_node_user,
            "Nodes_ReplaceNodeUser": self._replace_node_user,
            "Nodes_DeleteNodeUser": self._delete_node_user,
            "Nodes_DeallocateNode": self._deallocate_node,
            "Nodes_StartNode": self._start_node,
            "JobSchedules_ListJobSchedules": self._list_job_schedules,
            "JobSchedules_CreateJobSchedule": self._create_job_schedule,
            "JobSchedules_GetJobSchedule": self._get_job_schedule,
            "JobSchedules_JobScheduleExists": self._head_job_schedule,
            "JobSchedules_UpdateJobSchedule": self._patch_job_schedule,
            "JobSchedules_ReplaceJobSchedule": self._put_job_schedule,
            "JobSchedules_DeleteJobSchedule": self._delete_job_schedule,
            "JobSchedules_DisableJobSchedule": self._disable_job_schedule,
            "JobSchedules_EnableJobSchedule": self._enable_job_schedule,
            "JobSchedules_TerminateJobSchedule": self._terminate_job_schedule,
            "Jobs_ListJobsFromSchedule": self._list_jobs_from_schedule,
            "Jobs_ListJobs": self._list_jobs,
            "Jobs_CreateJob": self._create_job,
            "Jobs_GetJob": self._get_job,
            "Jobs_UpdateJob": self._patch_job,
            "Jobs_ReplaceJob": self._put_job,
            "Jobs_DeleteJob": self._delete_job,
            "Jobs_TerminateJob": self._terminate_job,
            "Jobs_DisableJob": self._disable_job,
            "Jobs_EnableJob": self._enable_job,
            "Jobs_GetJobTaskCounts": self._task_counts,
            "Jobs_ListJobPreparationAndReleaseTaskStatus": self._prep_release_status,
            "Tasks_ListTasks": self._list_tasks,
            "Tasks_CreateTask": self._create_task,
            "Tasks_CreateTaskCollection": self._add_task_collection,
            "Tasks_GetTask": self._get_task,
            "Tasks_ReplaceTask": self._put_task,
            "Tasks_DeleteTask": self._delete_task,
            "Tasks_TerminateTask": self._terminate_task,
            "Tasks_ReactivateTask": self._reactivate_task,
            "Tasks_ListSubTasks": self._list_subtasks,
            "Tasks_ListTaskFiles": self._list_task_files,
            "Tasks_GetTaskFile": self._get_task_file,
            "Tasks_GetTaskFileProperties": self._get_task_file,
            "Tasks_DeleteTaskFile": self._delete_task_file,
        }

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], str, Handler]]:
        handlers = self._handlers()
        routes = []
        for op in schema.operations():
            handler = handlers.get(op.operation_id) or self._not_implemented(op.operation_id)
            routes.append((op.method, re.compile(schema.path_regex(op.path) + "$"), op.operation_id, handler))
        return routes

    def _not_implemented(self, operation_id: str) -> Handler:
        def handler(request: _Request, *args: str) -> _Response:
            raise ApiError(
                501,
                "NotImplemented",
                f"The Batch emulator does not implement {operation_id} yet.",
                [("OperationId", operation_id)],
            )

        return handler

    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes) -> tuple[_Response, Any]:
        """Answer one request (used by the HTTP handler); returns the response and the parsed body.

        Absolute URLs in the answer (``url``, ``odata.metadata``, ``odata.nextLink``, ``Location``,
        ``DataServiceId``...) start with the address the client used (its ``Host`` header), not the
        address the emulator is bound to: behind a proxy or a port forward, a client's next page and
        the ``url`` it reads go back the way it came.
        """
        response, body = self._handle(method, raw_path, headers, raw_body)
        base = self._public_base(headers)
        if base != self.url:
            response.body = _rebase(response.body, self.url, base)
            quoted_old, quoted_new = quote(self.url, safe=""), quote(base, safe="")
            response.headers = {
                k: v.replace(self.url, base).replace(quoted_old, quoted_new) for k, v in response.headers.items()
            }
        return response, body

    def _public_base(self, headers: dict[str, str]) -> str:
        host = next((v for k, v in headers.items() if k.lower() == "host"), None)
        if not host or not re.fullmatch(r"[A-Za-z0-9.\-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?", host.strip()):
            return self.url
        proto = next((v for k, v in headers.items() if k.lower() == "x-forwarded-proto"), "http")
        return f"{'https' if proto.strip().lower() == 'https' else 'http'}://{host.strip()}"

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes) -> tuple[_Response, Any]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query, keep_blank_values=True)
        body: Any = ""
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body = raw_body.decode("utf-8", "replace")
                if method in ("POST", "PUT", "PATCH"):
                    return self._error(ApiError(400, "InvalidRequestBody")), body
        reason = self._verify(method, raw_path, headers)
        if reason is not None:
            return self._error(
                ApiError(403, "AuthenticationFailed", values=[("AuthenticationErrorDetail", reason)])
            ), body
        version_error = _check_api_version(query)
        if version_error is not None:
            return self._error(version_error), body
        path = parts.path.rstrip("/") or "/"
        if method == "POST" and path.endswith("/addtaskcollection") and len(raw_body) > MAX_TASK_COLLECTION_BYTES:
            return self._error(ApiError(413, "RequestBodyTooLarge")), body
        request = _Request(method, path, query, headers, body)
        allowed = False
        for route_method, pattern, operation_id, handler in self._routes:
            m = pattern.match(path)
            if not m:
                continue
            allowed = True
            if route_method != method:
                continue
            args = [unquote(g) for g in m.groups()]
            try:
                if method in ("POST", "PUT", "PATCH"):
                    schema.validate(operation_id, body if raw_body else {})
                not_modified = self._check_conditions(request)
                if not_modified is not None:
                    return not_modified, body
                response = handler(request, *args)
                if method in ("POST", "PUT", "PATCH", "DELETE") and response.status < 300:
                    self.state.kick()  # what the request made due happens before the client's next read
                return response, body
            except ApiError as err:
                return self._error(err), body
            except Exception as exc:  # noqa: BLE001 - answer 500 in the service's shape, keep serving
                log.exception("internal error on %s %s", method, path)
                return self._error(ApiError(500, "InternalError", values=[("Message", str(exc)[:300])])), body
        if allowed:
            return self._error(ApiError(405, "UnsupportedHttpVerb")), body
        return self._error(not_found("ResourceNotFound")), body

    # ----------------------------------------------------------------- conditional requests
    _CONDITIONAL = (
        (re.compile(r"/jobs/([^/]+)/tasks/([^/]+)(?:/(?:terminate|reactivate))?"), "task"),
        (re.compile(r"/jobs/([^/]+)(?:/(?:disable|enable|terminate))?"), "job"),
        (re.compile(r"/jobschedules/([^/]+)(?:/(?:disable|enable|terminate))?"), "schedule"),
        (
            re.compile(
                r"/pools/([^/]+)(?:/(?:resize|stopresize|updateproperties|enableautoscale|disableautoscale"
                r"|evaluateautoscale|removenodes))?"
            ),
            "pool",
        ),
    )

    def _conditional_target(self, path: str) -> dict[str, Any] | None:
        for pattern, kind in self._CONDITIONAL:
            m = pattern.fullmatch(path)
            if m is None:
                continue
            try:
                if kind == "task":
                    return self.state.get_task(unquote(m.group(1)), unquote(m.group(2)))
                if kind == "job":
                    return self.state.get_job(unquote(m.group(1)))
                if kind == "schedule":
                    return self.state.get_job_schedule(unquote(m.group(1)))
                return self.state.get_pool(unquote(m.group(1)))
            except ApiError:
                return None  # the handler answers the 404
        return None

    def _check_conditions(self, request: _Request) -> _Response | None:
        """Apply ``If-Match``, ``If-None-Match``, ``If-Modified-Since`` and ``If-Unmodified-Since``.

        As the service does for pools, jobs, schedules and tasks: a failed condition on a read answers
        304 Not Modified, on any other request 412 ``ConditionNotMet``. Returns the response to send
        instead of the handler's, or None.
        """
        names = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
        if not any(request.header(n) for n in names):
            return None
        data = self._conditional_target(request.path)
        if data is None:
            return None
        etag = str(data.get("eTag"))
        modified = int(datetime.strptime(data["lastModified"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp())
        read = request.method in ("GET", "HEAD")
        failed_read = False
        match = request.header("if-match")
        if match and match.strip() != "*" and etag not in [t.strip().strip('"') for t in match.split(",")]:
            raise ApiError(412, "ConditionNotMet")
        none_match = request.header("if-none-match")
        if none_match and (none_match.strip() == "*" or etag in [t.strip().strip('"') for t in none_match.split(",")]):
            if not read:
                raise ApiError(412, "ConditionNotMet")
            failed_read = True
        since = _parse_http_date(request.header("if-modified-since"))
        if since is not None and modified <= since:
            if not read:
                raise ApiError(412, "ConditionNotMet")
            failed_read = True
        until = _parse_http_date(request.header("if-unmodified-since"))
        if until is not None and modified > until:
            raise ApiError(412, "ConditionNotMet")
        if failed_read:
            return _Response(304, None, {"ETag": etag, "Last-Modified": _http_date(data["lastModified"])})
        return None

    # ----------------------------------------------------------------- response helpers
    def _error(self, err: ApiError) -> _Response:
        request_id = str(uuid.uuid4())
        stamp = datetime.fromtimestamp(self.state.now(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
        body: dict[str, Any] = {
            "odata.metadata": f"{self.url}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
            "code": err.code,
            "message": {"lang": "en-US", "value": f"{err.message}\nRequestId:{request_id}\nTime:{stamp}"},
        }
        if err.values:
            body["values"] = [{"key": k, "value": v} for k, v in err.values]
        return _Response(err.status, body, {"request-id": request_id})

    def _entity(self, data: dict[str, Any], collection: str, request: _Request) -> _Response:
        body = {"odata.metadata": f"{self.url}/$metadata#{collection}/@Element"}
        body.update(apply_select(data, request.q("$select")))
        return _Response(200, body, {"ETag": data["eTag"], "Last-Modified": _http_date(data["lastModified"])})

    def _list(self, items: list[dict[str, Any]], collection: str, request: _Request) -> _Response:
        pred = compile_filter(request.q("$filter"))
        select = request.q("$select")
        try:
            limit = min(int(request.q("maxresults") or _MAX_RESULTS), _MAX_RESULTS)
            skip = int(request.q("$skiptoken") or 0)
        except ValueError as exc:
            raise ApiError(400, "InvalidQueryParameterValue", values=[("QueryParameterName", "maxresults")]) from exc
        if limit < 1:
            raise ApiError(400, "InvalidQueryParameterValue", values=[("QueryParameterName", "maxresults")])
        matched = [i for i in items if pred(i)]
        page = matched[skip : skip + limit]
        body: dict[str, Any] = {
            "odata.metadata": f"{self.url}/$metadata#{collection}",
            "value": [apply_select(i, select) for i in page],
        }
        if skip + limit < len(matched):
            params = {"api-version": request.q("api-version") or "2025-06-01", "maxresults": str(limit)}
            for name in ("$filter", "$select", "$expand", "recursive"):
                if request.q(name):
                    params[name] = str(request.q(name))
            params["$skiptoken"] = str(skip + limit)
            query = "&".join(f"{k}={quote(v, safe=_QUERY_SAFE)}" for k, v in params.items())
            body["odata.nextLink"] = f"{self.url}{request.path}?{query}"
        return _Response(200, body)

    def _created(self, url: str, data: dict[str, Any]) -> _Response:
        return _Response(
            201,
            None,
            {
                "Location": url,
                "DataServiceId": url,
                "ETag": data["eTag"],
                "Last-Modified": _http_date(data["lastModified"]),
            },
        )

    def _accepted(self, request: _Request, data: dict[str, Any] | None, status: int = 202) -> _Response:
        headers = {"DataServiceId": f"{self.url}{request.path}"}
        if data is not None:
            headers.update({"ETag": data["eTag"], "Last-Modified": _http_date(data["lastModified"])})
        return _Response(status, None, headers)

    def _obj(self, request: _Request) -> dict[str, Any]:
        if not isinstance(request.body, dict):
            raise ApiError(400, "InvalidRequestBody")
        return request.body

    # ----------------------------------------------------------------- account features
    def _list_applications(self, request: _Request) -> _Response:
        # The emulated account has no application packages (no linked storage account).
        return self._list([], "applications", request)

    def _get_application(self, request: _Request, application_id: str) -> _Response:
        raise not_found("ApplicationNotFound")

    def _list_certificates(self, request: _Request) -> _Response:
        return self._list(self.state.list_certificates(), "certificates", request)

    def _create_certificate(self, request: _Request) -> _Response:
        data = self.state.create_certificate(self._obj(request))
        return self._created(data["url"], data)

    def _get_certificate(self, request: _Request, algorithm: str, thumbprint: str) -> _Response:
        return self._entity(self.state.get_certificate(algorithm, thumbprint), "certificates", request)

    def _delete_certificate(self, request: _Request, algorithm: str, thumbprint: str) -> _Response:
        self.state.delete_certificate(algorithm, thumbprint)
        return _Response(202)

    def _cancel_certificate_deletion(self, request: _Request, algorithm: str, thumbprint: str) -> _Response:
        data = self.state.cancel_certificate_deletion(algorithm, thumbprint)
        return self._accepted(request, data, 204)

    def _pool_usage_metrics(self, request: _Request) -> _Response:
        # The service aggregates usage per pool and hour with a delay of hours; an emulator that has run
        # for less than that has nothing to report yet.
        return self._list([], "poolusagemetrics", request)

    # ----------------------------------------------------------------- pools
    def _list_pools(self, request: _Request) -> _Response:
        return self._list(self.state.list_pools(), "pools", request)

    def _create_pool(self, request: _Request) -> _Response:
        pool = self.state.create_pool(self._obj(request))
        return self._created(pool.data["url"], pool.data)

    def _get_pool(self, request: _Request, pool_id: str) -> _Response:
        return self._entity(self.state.get_pool(pool_id), "pools", request)

    def _head_pool(self, request: _Request, pool_id: str) -> _Response:
        data = self.state.get_pool(pool_id)
        return _Response(200, None, {"ETag": data["eTag"], "Last-Modified": _http_date(data["lastModified"])})

    def _patch_pool(self, request: _Request, pool_id: str) -> _Response:
        self.state.update_pool(pool_id, self._obj(request))
        return self._accepted(request, self.state.get_pool(pool_id), 200)

    def _update_pool_properties(self, request: _Request, pool_id: str) -> _Response:
        self.state.update_pool(pool_id, self._obj(request), replace=True)
        return self._accepted(request, self.state.get_pool(pool_id), 204)

    def _delete_pool(self, request: _Request, pool_id: str) -> _Response:
        self.state.delete_pool(pool_id)
        return _Response(202)

    def _resize_pool(self, request: _Request, pool_id: str) -> _Response:
        self.state.resize_pool(pool_id, self._obj(request))
        return self._accepted(request, self.state.get_pool(pool_id))

    def _stop_resize(self, request: _Request, pool_id: str) -> _Response:
        self.state.stop_resize(pool_id)
        return self._accepted(request, self.state.get_pool(pool_id))

    def _enable_autoscale(self, request: _Request, pool_id: str) -> _Response:
        self.state.enable_autoscale(pool_id, self._obj(request))
        return self._accepted(request, self.state.get_pool(pool_id), 200)

    def _disable_autoscale(self, request: _Request, pool_id: str) -> _Response:
        self.state.disable_autoscale(pool_id)
        return self._accepted(request, self.state.get_pool(pool_id), 200)

    def _evaluate_autoscale(self, request: _Request, pool_id: str) -> _Response:
        run = self.state.evaluate_autoscale(pool_id, self._obj(request))
        metadata = f"{self.url}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.AutoScaleRun"
        return _Response(200, {"odata.metadata": metadata, **run}, {"DataServiceId": f"{self.url}{request.path}"})

    def _list_nodes(self, request: _Request, pool_id: str) -> _Response:
        return self._list(self.state.list_nodes(pool_id), "nodes", request)

    def _get_node(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        body = {"odata.metadata": f"{self.url}/$metadata#nodes/@Element"}
        body.update(apply_select(self.state.get_node(pool_id, node_id), request.q("$select")))
        return _Response(200, body)

    def _remote_login_settings(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        node = self.state.get_node(pool_id, node_id)
        settings = remote_login_settings(self.state.get_pool(pool_id), node)
        if settings is None:
            # No public endpoint (provision: nopublicipaddresses): nothing to log in through.
            raise ApiError(409, "OperationNotValidOnNode", "The node has no public endpoint for remote login.")
        body = {"odata.metadata": f"{self.url}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.RemoteLoginSettings"}
        body.update(settings)
        return _Response(200, body)

    def _list_node_extensions(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        self.state.get_node(pool_id, node_id)
        return self._list(node_extensions(self.state.get_pool(pool_id)), "nodeextensions", request)

    def _get_node_extension(self, request: _Request, pool_id: str, node_id: str, name: str) -> _Response:
        self.state.get_node(pool_id, node_id)
        for ext in node_extensions(self.state.get_pool(pool_id)):
            if ext["vmExtension"]["name"] == name:
                body = {"odata.metadata": f"{self.url}/$metadata#nodeextensions/@Element"}
                body.update(apply_select(ext, request.q("$select")))
                return _Response(200, body)
        raise not_found("NodeExtensionNotFound")

    def _upload_node_logs(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        result = self.state.upload_node_logs(pool_id, node_id, self._obj(request))
        entity = "Microsoft.Azure.Batch.Protocol.Entities.UploadBatchServiceLogsResult"
        body = {"odata.metadata": f"{self.url}/$metadata#{entity}"}
        body.update(result)
        return _Response(200, body)

    def _optional(self, request: _Request) -> dict[str, Any] | None:
        return request.body if isinstance(request.body, dict) else None

    def _remove_nodes(self, request: _Request, pool_id: str) -> _Response:
        self.state.remove_nodes(pool_id, self._obj(request))
        return self._accepted(request, self.state.get_pool(pool_id))

    def _reboot_node(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        self.state.reboot_node(pool_id, node_id, self._optional(request))
        return self._accepted(request, None)

    def _reimage_node(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        self.state.reimage_node(pool_id, node_id, self._optional(request))
        return self._accepted(request, None)

    def _deallocate_node(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        self.state.deallocate_node(pool_id, node_id, self._optional(request))
        return self._accepted(request, None)

    def _start_node(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        self.state.start_node(pool_id, node_id)
        return self._accepted(request, None)

    def _disable_scheduling(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        self.state.disable_scheduling(pool_id, node_id, self._optional(request))
        return self._accepted(request, None, 200)

    def _enable_scheduling(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        self.state.enable_scheduling(pool_id, node_id)
        return self._accepted(request, None, 200)

    def _add_node_user(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        body = self._obj(request)
        self.state.add_node_user(pool_id, node_id, body)
        url = f"{self.url}{request.path}/{quote(str(body['name']))}"
        return _Response(201, None, {"Location": url, "DataServiceId": url})

    def _replace_node_user(self, request: _Request, pool_id: str, node_id: str, name: str) -> _Response:
        self.state.replace_node_user(pool_id, node_id, name, self._obj(request))
        return self._accepted(request, None, 200)

    def _delete_node_user(self, request: _Request, pool_id: str, node_id: str, name: str) -> _Response:
        self.state.delete_node_user(pool_id, node_id, name)
        return _Response(200)

    def _node_counts(self, request: _Request) -> _Response:
        return self._list(self.state.node_counts(), "poolnodecounts", request)

    def _supported_images(self, request: _Request) -> _Response:
        return self._list([dict(i) for i in SUPPORTED_IMAGES], "supportedimages", request)

    # ----------------------------------------------------------------- jobs
    def _list_jobs(self, request: _Request) -> _Response:
        return self._list(self.state.list_jobs(), "jobs", request)

    def _create_job(self, request: _Request) -> _Response:
        job = self.state.create_job(self._obj(request))
        return self._created(job.data["url"], job.data)

    def _get_job(self, request: _Request, job_id: str) -> _Response:
        return self._entity(self.state.get_job(job_id), "jobs", request)

    def _patch_job(self, request: _Request, job_id: str) -> _Response:
        self.state.update_job(job_id, self._obj(request))
        return self._accepted(request, self.state.get_job(job_id), 200)

    def _put_job(self, request: _Request, job_id: str) -> _Response:
        self.state.update_job(job_id, self._obj(request), replace=True)
        return self._accepted(request, self.state.get_job(job_id), 200)

    def _delete_job(self, request: _Request, job_id: str) -> _Response:
        self.state.delete_job(job_id)
        return _Response(202)

    def _terminate_job(self, request: _Request, job_id: str) -> _Response:
        reason = request.body.get("terminateReason") if isinstance(request.body, dict) else None
        self.state.terminate_job(job_id, reason)
        return self._accepted(request, self.state.get_job(job_id))

    def _disable_job(self, request: _Request, job_id: str) -> _Response:
        self.state.disable_job(job_id, str(self._obj(request)["disableTasks"]))
        return self._accepted(request, self.state.get_job(job_id))

    def _enable_job(self, request: _Request, job_id: str) -> _Response:
        self.state.enable_job(job_id)
        return self._accepted(request, self.state.get_job(job_id))

    def _task_counts(self, request: _Request, job_id: str) -> _Response:
        body = {"odata.metadata": f"{self.url}/$metadata#taskcountsresult/@Element"}
        body.update(self.state.task_counts(job_id))
        return _Response(200, body)

    def _prep_release_status(self, request: _Request, job_id: str) -> _Response:
        job = self.state.get_job(job_id)
        if not job.get("jobPreparationTask") and not job.get("jobReleaseTask"):
            raise ApiError(409, "JobPreparationTaskNotSpecified")
        return self._list(self.state.job_prep_release_status(job_id), "jobpreparationandreleasetaskstatuslist", request)

    # ----------------------------------------------------------------- job schedules
    def _list_job_schedules(self, request: _Request) -> _Response:
        return self._list(self.state.list_job_schedules(), "jobschedules", request)

    def _create_job_schedule(self, request: _Request) -> _Response:
        schedule = self.state.create_job_schedule(self._obj(request))
        return self._created(schedule.data["url"], schedule.data)

    def _get_job_schedule(self, request: _Request, schedule_id: str) -> _Response:
        return self._entity(self.state.get_job_schedule(schedule_id), "jobschedules", request)

    def _head_job_schedule(self, request: _Request, schedule_id: str) -> _Response:
        data = self.state.get_job_schedule(schedule_id)
        return _Response(200, None, {"ETag": data["eTag"], "Last-Modified": _http_date(data["lastModified"])})

    def _patch_job_schedule(self, request: _Request, schedule_id: str) -> _Response:
        self.state.update_job_schedule(schedule_id, self._obj(request))
        return self._accepted(request, self.state.get_job_schedule(schedule_id), 200)

    def _put_job_schedule(self, request: _Request, schedule_id: str) -> _Response:
        self.state.update_job_schedule(schedule_id, self._obj(request), replace=True)
        return self._accepted(request, self.state.get_job_schedule(schedule_id), 200)

    def _delete_job_schedule(self, request: _Request, schedule_id: str) -> _Response:
        self.state.delete_job_schedule(schedule_id)
        return _Response(202)

    def _disable_job_schedule(self, request: _Request, schedule_id: str) -> _Response:
        self.state.disable_job_schedule(schedule_id)
        return self._accepted(request, self.state.get_job_schedule(schedule_id), 204)

    def _enable_job_schedule(self, request: _Request, schedule_id: str) -> _Response:
        self.state.enable_job_schedule(schedule_id)
        return self._accepted(request, self.state.get_job_schedule(schedule_id), 204)

    def _terminate_job_schedule(self, request: _Request, schedule_id: str) -> _Response:
        self.state.terminate_job_schedule(schedule_id)
        return self._accepted(request, self.state.get_job_schedule(schedule_id))

    def _list_jobs_from_schedule(self, request: _Request, schedule_id: str) -> _Response:
        return self._list(self.state.list_jobs_from_schedule(schedule_id), "jobs", request)

    # ----------------------------------------------------------------- tasks
    def _list_tasks(self, request: _Request, job_id: str) -> _Response:
        return self._list(self.state.list_tasks(job_id), "tasks", request)

    def _create_task(self, request: _Request, job_id: str) -> _Response:
        task = self.state.add_task(job_id, self._obj(request))
        return self._created(task.data["url"], task.data)

    def _add_task_collection(self, request: _Request, job_id: str) -> _Response:
        body = self._obj(request)
        tasks = body.get("value")
        if not isinstance(tasks, list):
            raise ApiError(400, "MissingRequiredProperty", values=[("PropertyName", "value")])
        if len(tasks) > MAX_TASKS_PER_COLLECTION:
            raise invalid_property("value", f"{len(tasks)} tasks", "A collection may hold at most 100 tasks.")
        results = self.state.add_task_collection(job_id, tasks)
        for entry in results:
            err = entry.get("error")
            if isinstance(err, ApiError):
                error_body = self._error(err).body
                error_body.pop("odata.metadata", None)
                entry["error"] = error_body
        return _Response(200, {"odata.metadata": f"{self.url}/$metadata#taskaddresult", "value": results})

    def _get_task(self, request: _Request, job_id: str, task_id: str) -> _Response:
        return self._entity(self.state.get_task(job_id, task_id), "tasks", request)

    def _delete_task(self, request: _Request, job_id: str, task_id: str) -> _Response:
        self.state.delete_task(job_id, task_id)
        return _Response(200)

    def _put_task(self, request: _Request, job_id: str, task_id: str) -> _Response:
        self.state.replace_task(job_id, task_id, self._obj(request))
        return self._accepted(request, self.state.get_task(job_id, task_id), 200)

    def _reactivate_task(self, request: _Request, job_id: str, task_id: str) -> _Response:
        self.state.reactivate_task(job_id, task_id)
        return self._accepted(request, self.state.get_task(job_id, task_id), 204)

    def _list_subtasks(self, request: _Request, job_id: str, task_id: str) -> _Response:
        # Only multi-instance tasks have subtasks; any other task has none, as on the service.
        subtasks = self.state.list_subtasks(job_id, task_id)
        return _Response(200, {"odata.metadata": f"{self.url}/$metadata#subtaskinfo", "value": subtasks})

    def _terminate_task(self, request: _Request, job_id: str, task_id: str) -> _Response:
        self.state.terminate_task(job_id, task_id)
        return self._accepted(request, self.state.get_task(job_id, task_id), 204)

    # ----------------------------------------------------------------- files
    def _task_root(self, job_id: str, task_id: str) -> Path:
        root = self.state.task_dir(job_id, task_id)
        if root is None or not root.exists():
            raise not_found("FileNotFound")
        return root

    def _node_root(self, pool_id: str, node_id: str) -> Path:
        self.state.get_node(pool_id, node_id)
        return self.state.node_root(node_id)

    def _file_list(self, root: Path, base_url: str, request: _Request) -> _Response:
        recursive = (request.q("recursive") or "false").lower() == "true"
        entries: list[dict[str, Any]] = []
        walker = sorted(root.rglob("*")) if recursive else sorted(root.iterdir())
        for path in walker:
            rel = path.relative_to(root).as_posix()
            url = f"{base_url}/files/{quote(rel)}"
            if path.is_dir():
                entries.append({"name": rel, "url": url, "isDirectory": True})
            else:
                st = path.stat()
                entries.append(
                    {
                        "name": rel,
                        "url": url,
                        "isDirectory": False,
                        "properties": {
                            "creationTime": iso(self.state.clock.from_real(st.st_ctime)),
                            "lastModified": iso(self.state.clock.from_real(st.st_mtime)),
                            "contentLength": str(st.st_size),
                            "contentType": _content_type(path),
                            "fileMode": format(st.st_mode, "o"),
                        },
                    }
                )
        return self._list(entries, "files", request)

    def _file(self, root: Path, rel: str, base_url: str, request: _Request) -> _Response:
        target = (root / rel.replace("\\", "/")).resolve()
        if not str(target).startswith(str(root.resolve())) or not target.exists():
            raise not_found("FileNotFound")
        st = target.stat()
        headers = {
            "Last-Modified": rfc1123(self.state.clock.from_real(st.st_mtime)),
            "ocp-creation-time": rfc1123(self.state.clock.from_real(st.st_ctime)),
            "ocp-batch-file-isdirectory": "True" if target.is_dir() else "False",
            "ocp-batch-file-url": quote(f"{base_url}/files/{quote(rel)}", safe=""),
            "ocp-batch-file-mode": format(st.st_mode, "o"),
        }
        if target.is_dir():
            return _Response(200, None, headers, raw=b"", content_type="application/octet-stream")
        size = st.st_size
        start, end = 0, size - 1
        spec = request.header("ocp-range")
        if spec:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", spec)
            if not m or (not m.group(1) and not m.group(2)):
                raise ApiError(
                    400,
                    "InvalidHeaderValue",
                    "The value for one of the HTTP headers is not in the correct format.",
                    [("HeaderName", "ocp-range"), ("HeaderValue", spec)],
                )
            if m.group(1):
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
            else:
                start = max(0, size - int(m.group(2)))
            end = min(end, size - 1)
            if start >= size and size > 0:
                raise ApiError(
                    416, "InvalidRange", "The range specified is invalid for the current size of the resource."
                )
        if request.method == "HEAD":
            headers["Content-Length"] = str(size)
            return _Response(200, None, headers, raw=b"", content_type=_content_type(target))
        with open(target, "rb") as fh:
            fh.seek(start)
            data = fh.read(max(0, end - start + 1))
        return _Response(200, None, headers, raw=data, content_type=_content_type(target))

    def _list_task_files(self, request: _Request, job_id: str, task_id: str) -> _Response:
        self.state.get_task(job_id, task_id)
        root = self.state.task_dir(job_id, task_id)
        if root is None or not root.exists():
            return self._list([], "files", request)
        return self._file_list(root, f"{self.url}/jobs/{job_id}/tasks/{task_id}", request)

    def _get_task_file(self, request: _Request, job_id: str, task_id: str, rel: str) -> _Response:
        self.state.get_task(job_id, task_id)
        root = self._task_root(job_id, task_id)
        return self._file(root, rel, f"{self.url}/jobs/{job_id}/tasks/{task_id}", request)

    def _delete_task_file(self, request: _Request, job_id: str, task_id: str, rel: str) -> _Response:
        self.state.get_task(job_id, task_id)
        return self._delete_file(self._task_root(job_id, task_id), rel, request)

    def _list_node_files(self, request: _Request, pool_id: str, node_id: str) -> _Response:
        return self._file_list(
            self._node_root(pool_id, node_id), f"{self.url}/pools/{pool_id}/nodes/{node_id}", request
        )

    def _get_node_file(self, request: _Request, pool_id: str, node_id: str, rel: str) -> _Response:
        return self._file(
            self._node_root(pool_id, node_id), rel, f"{self.url}/pools/{pool_id}/nodes/{node_id}", request
        )

    def _delete_node_file(self, request: _Request, pool_id: str, node_id: str, rel: str) -> _Response:
        return self._delete_file(self._node_root(pool_id, node_id), rel, request)

    def _delete_file(self, root: Path, rel: str, request: _Request) -> _Response:
        target = (root / rel.replace("\\", "/")).resolve()
        if not str(target).startswith(str(root.resolve())) or not target.exists():
            raise not_found("FileNotFound")
        if target.is_dir():
            if (request.q("recursive") or "").lower() == "true":
                shutil.rmtree(target)
            else:
                try:
                    target.rmdir()
                except OSError as exc:
                    raise ApiError(409, "DirectoryNotEmpty", "The directory is not empty.") from exc
        else:
            target.unlink()
        return _Response(200)


def _parse_http_date(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError):
        raise ApiError(
            400, "InvalidHeaderValue", values=[("HeaderName", "If-Modified-Since"), ("HeaderValue", text)]
        ) from None


def _http_date(iso_text: str) -> str:
    return rfc1123(datetime.strptime(iso_text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp())


def _content_type(path: Path) -> str:
    if path.suffix in (".txt", ".log", ".out", ".err"):
        return "text/plain"
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _check_api_version(query: dict[str, list[str]]) -> ApiError | None:
    """The service's answer to a missing or unknown ``api-version``, or None when it is one it takes."""
    if not query.get("api-version"):
        return ApiError(400, "MissingRequiredQueryParameter", values=[("QueryParameterName", "api-version")])
    version = query["api-version"][0]
    if version not in API_VERSIONS:
        return ApiError(
            400,
            "InvalidQueryParameterValue",
            values=[
                ("QueryParameterName", "api-version"),
                ("QueryParameterValue", version),
                ("Reason", "The specified api-version is invalid or not supported."),
            ],
        )
    return None


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this, 40 ms a response
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _serve(self) -> None:
        emulator: Emulator = self.server.emulator  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        plan = emulator.faults  # --faults (emulator/faults.py)
        fault = plan.pick(self.command, urlsplit(self.path).path) if plan is not None else None
        if faults.before(self, fault, length):
            return
        raw_body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        response, body = emulator.handle(self.command, self.path, headers, raw_body)
        request_id = response.headers.pop("request-id", None) or str(uuid.uuid4())
        if response.raw is not None:
            payload = response.raw
            content_type = response.content_type
        elif response.body is not None:
            payload = json.dumps(response.body).encode()
            content_type = _JSON
        else:
            payload = b""
            content_type = None
        # Recorded before the answer goes out: a client that has its answer finds its request in the record.
        emulator._record(
            {
                "method": self.command,
                "path": urlsplit(self.path).path,
                "query": parse_qs(urlsplit(self.path).query, keep_blank_values=True),
                "headers": headers,
                "body": _redact(body),
                "status": response.status,
                "sharedkey_valid": response.status != 403 or not _is_auth_error(response),
            }
        )
        if fault is not None and fault.kind == "reset-after":
            faults.reset(self)  # handled, but the answer never arrives
            return
        self.send_response(response.status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("DataServiceVersion", "3.0")
        self.send_header("request-id", request_id)
        client_request_id = self.headers.get("client-request-id")
        if client_request_id:
            self.send_header("client-request-id", client_request_id)
        for name, value in response.headers.items():
            if name != "Content-Length":
                self.send_header(name, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", response.headers.get("Content-Length", str(len(payload))))
        else:
            self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve


def _rebase(value: Any, old: str, new: str) -> Any:
    """``value`` with every string that starts with ``old`` starting with ``new`` instead."""
    if isinstance(value, str):
        return new + value[len(old) :] if value.startswith(old) else value
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    return value


def _redact(value: Any) -> Any:
    """A copy of a request body with secrets (container registry passwords) masked: a record is a log."""
    if isinstance(value, dict):
        return {k: "***" if k.lower() == "password" and v else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _is_auth_error(response: _Response) -> bool:
    return isinstance(response.body, dict) and response.body.get("code") == "AuthenticationFailed"
