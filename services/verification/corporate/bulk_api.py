"""Bulk upload routes: POST a CSV or JSON Lines file (202 + Location), GET the job, GET its report."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import FromPath
from litestar.response import Stream

from services.common.errors import ErrorResponse, error_response
from services.common.web import runtime_extra
from services.verification.corporate.api import write_guard
from services.verification.corporate.bulk import (
    COLUMNS,
    JOB_NOT_FOUND,
    MAX_BYTES,
    MAX_ROWS,
    BulkJobView,
    BulkUploads,
    Format,
)
from services.verification.corporate.oauth import Caller

EXTRA = "corporate_bulk"
Bulk = NamedDependency[BulkUploads]
CurrentCaller = NamedDependency[Caller]

CSV_TYPES = frozenset({"text/csv", "application/csv"})
JSONL_TYPES = frozenset(
    {"application/jsonl", "application/x-ndjson", "application/x-jsonlines", "application/jsonlines"}
)


def bulk_of(state: State) -> BulkUploads:
    return runtime_extra(state, EXTRA, BulkUploads)


DEPENDENCIES = {"bulk": Provide(bulk_of, sync_to_thread=False)}
JOB_404 = ResponseSpec(
    ErrorResponse,
    description="No such upload of yours (another company's upload answers exactly the same)",
    examples=[
        Example(
            value={"error": {"code": "bulk_upload_not_found", "message": JOB_NOT_FOUND, "field": "job_id"}}
        )
    ],
)


@post(
    "/v1/corporate/bulk-uploads",
    guards=[write_guard],
    dependencies=DEPENDENCIES,
    tags=["corporate-sims"],
    summary="Bind many SIMs from a CSV or JSON Lines file (an asynchronous job)",
    description=f"`Content-Type: text/csv` (UTF-8 or Windows-1251, `;` or `,` as the header line shows) or "
    f"`application/jsonl` (one JSON object per line, UTF-8). Columns: {', '.join(COLUMNS)}; `number` and "
    f"`kind` (`device` or `employee`) are required, dates as YYYY-MM-DD or DD.MM.YYYY. Up to {MAX_ROWS} rows "
    f"and {MAX_BYTES} bytes. The whole file is checked first: broken encoding, unknown or missing columns, "
    "too many rows answer 400 (413 for the size) and nothing is applied. The 202 with `Location` comes once "
    "every row is validated (the single-SIM API's validation) and staged: the job then applies each row "
    "atomically (PUT semantics: a row sets the binding) and survives a restart of the service. The same file "
    "again changes nothing: its rows are reported `unchanged`.",
    status_code=202,
    request_max_body_size=None,  # enforced here while streaming, so the answer is our 413, early
    responses={
        202: ResponseSpec(BulkJobView, description="The job; poll its Location"),
        400: ResponseSpec(
            ErrorResponse,
            examples=[
                Example(
                    value={
                        "error": {
                            "code": "missing_columns",
                            "message": "missing column(s): kind",
                            "field": "file",
                        }
                    }
                )
            ],
        ),
        413: ResponseSpec(ErrorResponse, description="The body is over the byte limit"),
        415: ResponseSpec(ErrorResponse, description="Neither text/csv nor application/jsonl"),
    },
)
async def upload(request: Request[Any, Any, Any], bulk: Bulk, caller: CurrentCaller) -> Response[Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt: Format
    if media in CSV_TYPES:
        fmt = "csv"
    elif media in JSONL_TYPES:
        fmt = "jsonl"
    else:
        return error_response(
            415, "unsupported_media_type", "send text/csv or application/jsonl", field="content-type"
        )
    too_large = error_response(
        413, "body_too_large", f"the file is over {MAX_BYTES} bytes; split it", field="file"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BYTES:
        return too_large
    # Spooled to disk as it arrives: memory holds one network chunk, whatever the file's size.
    with tempfile.NamedTemporaryFile(prefix="abonent-bulk-", delete=False) as spool:
        path = Path(spool.name)
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BYTES:
                    raise OverflowError
                spool.write(chunk)
        except OverflowError:
            spool.close()
            await asyncio.to_thread(path.unlink, missing_ok=True)
            return too_large
        except BaseException:
            spool.close()
            await asyncio.to_thread(path.unlink, missing_ok=True)
            raise
    view = await bulk.submit(caller, path, fmt)
    return Response(view, status_code=202, headers={"Location": f"/v1/corporate/bulk-uploads/{view.id}"})


@get(
    "/v1/corporate/bulk-uploads/{job_id:uuid}",
    guards=[write_guard],
    dependencies=DEPENDENCIES,
    tags=["corporate-sims"],
    summary="A bulk upload's progress: rows done of total, applied, unchanged, errors so far",
    responses={404: JOB_404},
)
async def get_upload(job_id: FromPath[uuid.UUID], bulk: Bulk, caller: CurrentCaller) -> BulkJobView:
    return await bulk.get(caller, job_id)


@get(
    "/v1/corporate/bulk-uploads/{job_id:uuid}/report.csv",
    guards=[write_guard],
    dependencies=DEPENDENCIES,
    tags=["corporate-sims"],
    summary="The per-row report (CSV: row, outcome, field, reason) of rows not applied",
    media_type="text/csv",
    responses={404: JOB_404},
)
async def upload_report(job_id: FromPath[uuid.UUID], bulk: Bulk, caller: CurrentCaller) -> Stream:
    lines = await bulk.report(caller, job_id)
    return Stream(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="bulk-{job_id}.csv"'},
    )


ROUTES = [upload, get_upload, upload_report]
