"""Resource file downloads and output file uploads, with the failure codes the Batch service reports.

Downloads are plain HTTP GETs of ``httpUrl`` (or a container listing + GETs for ``storageContainerUrl``);
uploads are ``PUT`` with ``x-ms-blob-type: BlockBlob`` to the destination container SAS URL.
"""

from __future__ import annotations

import glob
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["TransferError", "download_resource_files", "upload_output_files"]

log = logging.getLogger("batchmagic.emulator")

_TIMEOUT = 60.0
_WILDCARDS = set("*?[")


@dataclass
class TransferError(Exception):
    """A resource file or output file failed; becomes the task's ``failureInfo``."""

    code: str
    message: str
    details: list[tuple[str, str]]

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _redact(url: str) -> str:
    """Drop the SAS query from a URL so that signatures never reach logs or task failure details."""
    return url.split("?", 1)[0]


def _download_error(url: str, exc: Exception) -> TransferError:
    status = getattr(exc, "code", None)
    details = [("FilePath", _redact(url)), ("Message", str(exc)[:500])]
    if status == 403:
        return TransferError("BlobAccessDenied", "Access for one of the specified Azure Blob(s) is denied", details)
    if status == 404:
        return TransferError("BlobNotFound", "One of the specified Azure Blob(s) is not found", details)
    return TransferError(
        "BlobDownloadMiscError",
        "Miscellaneous error encountered while downloading one of the specified Azure Blob(s)",
        details,
    )


def _fetch(url: str, dest: Path, file_mode: str | None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as resp, open(dest, "wb") as fh:
            while chunk := resp.read(1 << 20):
                fh.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _download_error(url, exc) from exc
    if file_mode:
        try:
            dest.chmod(int(file_mode, 8))
        except ValueError:
            pass


def _safe_join(root: Path, rel: str) -> Path:
    target = (root / rel.lstrip("/")).resolve()
    if not str(target).startswith(str(root.parent.resolve())):
        raise TransferError(
            "ResourceFileCreateFailed", "The file path of a resource file is outside the task directory", []
        )
    return target


def _list_container(container_url: str, prefix: str | None) -> list[str]:
    base, _, sas = container_url.partition("?")
    names: list[str] = []
    marker = ""
    while True:
        query = "restype=container&comp=list"
        if prefix:
            query += "&prefix=" + urllib.parse.quote(prefix, safe="")
        if marker:
            query += "&marker=" + urllib.parse.quote(marker, safe="")
        url = f"{base}?{query}" + (f"&{sas}" if sas else "")
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT) as resp:
                root = ET.fromstring(resp.read())
        except (urllib.error.URLError, OSError, ValueError, ET.ParseError) as exc:
            raise _download_error(container_url, exc) from exc
        names += [el.text or "" for el in root.iter("Name") if el.text]
        marker = root.findtext("NextMarker") or ""
        if not marker:
            return names


def download_resource_files(resource_files: list[dict[str, Any]], wd: Path) -> None:
    """Download a task's ``resourceFiles`` into its working directory.

    Raises
    ------
    TransferError
        ``BlobAccessDenied`` (403), ``BlobNotFound`` (404) or ``BlobDownloadMiscError`` (anything else).
    """
    for rf in resource_files:
        mode = rf.get("fileMode")
        if rf.get("httpUrl"):
            url = str(rf["httpUrl"])
            rel = rf.get("filePath") or urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
            _fetch(url, _safe_join(wd, str(rel)), mode)
        elif rf.get("storageContainerUrl"):
            container = str(rf["storageContainerUrl"])
            base, _, sas = container.partition("?")
            for name in _list_container(container, rf.get("blobPrefix")):
                url = f"{base}/{urllib.parse.quote(name)}" + (f"?{sas}" if sas else "")
                _fetch(url, _safe_join(wd, os.path.join(str(rf.get("filePath") or ""), name)), mode)
        else:
            raise TransferError(
                "BlobDownloadMiscError",
                "Only httpUrl and storageContainerUrl resource files are supported by the emulator",
                [("ResourceFile", str({k: v for k, v in rf.items() if k != "httpUrl"}))],
            )


def _should_upload(condition: str, succeeded: bool) -> bool:
    condition = condition.lower()
    if condition == "tasksuccess":
        return succeeded
    if condition == "taskfailure":
        return not succeeded
    return True


def _matches(pattern: str, wd: Path) -> list[tuple[Path, str]]:
    """Files matching ``pattern`` (relative to wd) with the blob-relative name of each."""
    has_wildcard = any(c in _WILDCARDS for c in pattern)
    full = os.path.normpath(os.path.join(wd, pattern))
    if not has_wildcard:
        return [(Path(full), Path(full).name)] if os.path.isfile(full) else []
    parts = pattern.replace("\\", "/").split("/")
    fixed: list[str] = []
    for part in parts:
        if any(c in _WILDCARDS for c in part):
            break
        fixed.append(part)
    base = os.path.normpath(os.path.join(wd, *fixed)) if fixed else str(wd)
    out = []
    for match in sorted(glob.glob(full, recursive=True)):
        if os.path.isfile(match):
            out.append((Path(match), os.path.relpath(match, base).replace(os.sep, "/")))
    return out


def put_blob(url: str, path: Path, headers: list[dict[str, Any]]) -> None:
    """PUT a file as a block blob at a (SAS) URL, with extra request headers."""
    data = path.read_bytes()
    req = urllib.request.Request(url, data=data, method="PUT")
    req.add_header("x-ms-blob-type", "BlockBlob")
    req.add_header("Content-Length", str(len(data)))
    for h in headers:
        if h.get("name"):
            req.add_header(str(h["name"]), str(h.get("value", "")))
    with urllib.request.urlopen(req, timeout=_TIMEOUT) as resp:
        resp.read()


def upload_output_files(output_files: list[dict[str, Any]], task_dir: Path, succeeded: bool) -> None:
    """Upload a finished task's ``outputFiles`` whose ``uploadCondition`` applies.

    A pattern without wildcards names one file and ``path`` is its blob name; a pattern with wildcards
    uploads every match under the virtual directory ``path`` (Batch semantics). A log of the uploads is
    written to ``fileuploadout.txt`` / ``fileuploaderr.txt`` in the task directory, as Batch does.

    Raises
    ------
    TransferError
        ``FileUploadAccessDenied`` (403) or ``FileUploadMiscError`` for any other failure.
    """
    wd = task_dir / "wd"
    lines: list[str] = []
    errors: list[str] = []
    failure: TransferError | None = None
    for spec in output_files:
        options = spec.get("uploadOptions") or {}
        if not _should_upload(str(options.get("uploadCondition") or "taskcompletion"), succeeded):
            continue
        container = ((spec.get("destination") or {}).get("container")) or {}
        container_url = str(container.get("containerUrl") or "")
        if not container_url:
            continue
        pattern = str(spec.get("filePattern") or "")
        prefix = str(container.get("path") or "").strip("/")
        has_wildcard = any(c in _WILDCARDS for c in pattern)
        base, _, sas = container_url.partition("?")
        for path, rel in _matches(pattern, wd):
            if prefix and not has_wildcard:
                blob = prefix
            else:
                blob = f"{prefix}/{rel}" if prefix else rel
            url = f"{base.rstrip('/')}/{urllib.parse.quote(blob)}" + (f"?{sas}" if sas else "")
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            try:
                put_blob(url, path, list(container.get("uploadHeaders") or []))
                lines.append(f"{stamp} INFO Uploaded {path} to {_redact(url)}")
            except (urllib.error.URLError, OSError) as exc:
                errors.append(f"{stamp} ERROR Failed to upload {path} to {_redact(url)}: {exc}")
                if failure is None:
                    status = getattr(exc, "code", None)
                    details = [("FilePath", str(path)), ("Message", str(exc)[:500])]
                    failure = (
                        TransferError("FileUploadAccessDenied", "Access denied while uploading an output file", details)
                        if status == 403
                        else TransferError(
                            "FileUploadMiscError",
                            "Miscellaneous error encountered while uploading output file(s)",
                            details,
                        )
                    )
    if lines or errors:
        (task_dir / "fileuploadout.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        (task_dir / "fileuploaderr.txt").write_text("\n".join(errors) + ("\n" if errors else ""))
    if failure is not None:
        log.info("output upload failed: %s", failure)
        raise failure
