"""Bulk upload of SIM bindings: a CSV or JSON Lines file checked whole, staged by COPY, applied set-based.

Two passes over the uploaded file (a temp file, never all in memory): the first checks the file itself
(encoding, columns, row count) so a malformed file is refused before any row is applied; the second
validates each row with the single-SIM API's own validators and COPYs chunks into `bulk_rows`. The apply
phase then decides a chunk at a time in one transaction: device bindings by one UPDATE … FROM unnest with
their outbox events and timeline written set-based; an employee binding (it opens a verification case
and checks the person's 20-number limit) goes through the single-SIM use case, one transaction per row.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import datetime as dt
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from services.common import db, outbox
from services.common.domain_errors import DomainError, Invalid, NotFound
from services.common.events import CorpSimBound
from services.verification.corporate import bulk_store, store
from services.verification.corporate.domain.sim import Action, transition
from services.verification.corporate.oauth import SCOPE_WRITE, Caller
from services.verification.corporate.schemas import BindingRequest, DeviceData, EmployeeData
from services.verification.corporate.usecases import (
    HOLDER_FIELDS,
    SIM_NOT_FOUND,
    CorporateSims,
    _check_device,
    _e164,
)

log = logging.getLogger(__name__)

Format = Literal["csv", "jsonl"]
MAX_ROWS = 100_000
# 100 000 rows of an employee export are ~25 MB; the limit leaves room and stops a 200 MB body early.
MAX_BYTES = 64 * 1024 * 1024
CHUNK_ROWS = 2000
BULK_CONTEXT = "bulk_rows.payload_enc"

DEVICE_COLUMNS = ("device_type", "device_name", "imei", "mac", "installation_address")
EMPLOYEE_COLUMNS = HOLDER_FIELDS
COLUMNS = ("number", "kind", *DEVICE_COLUMNS, *EMPLOYEE_COLUMNS)
REQUIRED = ("number", "kind")
# A validator's field (the single-SIM API names it in the JSON body) as the file's column.
_COLUMN_OF = {
    "device.type": "device_type",
    "device.name": "device_name",
    "device.imei": "imei",
    "device.mac": "mac",
    "device.installation_address": "installation_address",
    **{f"employee.{c}": c for c in EMPLOYEE_COLUMNS},
}
_RU_DATE = re.compile(r"^(\d{2})\.(\d{2})\.(\d{4})$")


def file_error(code: str, message: str) -> Invalid:
    """The one error a malformed file gets (nothing of it is applied)."""
    return Invalid(code, message, field="file")


# --- the file ------------------------------------------------------------------------------------------


def detect_encoding(path: Path) -> str:
    """UTF-8 (with or without a BOM) when the whole file decodes strictly, else Windows-1251 (Excel's
    "CSV" in a Russian locale) when that decodes strictly; anything else is broken."""
    with path.open("rb") as raw:
        bom = raw.read(3) == codecs.BOM_UTF8
        raw.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        try:
            while chunk := raw.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
            return "utf-8-sig" if bom else "utf-8"
        except UnicodeDecodeError as exc:
            if bom:
                raise file_error(
                    "broken_encoding", f"the file starts as UTF-8 but is not: {exc.reason}"
                ) from None
        raw.seek(0)
        single = codecs.getincrementaldecoder("cp1251")("strict")
        try:
            while chunk := raw.read(1 << 20):
                text = single.decode(chunk)
                if "\x00" in text:
                    raise file_error("broken_encoding", "the file is neither UTF-8 nor Windows-1251 text")
        except UnicodeDecodeError:
            raise file_error("broken_encoding", "the file is neither UTF-8 nor Windows-1251 text") from None
    return "cp1251"


def _check_header(names: list[str]) -> list[str]:
    header = [n.strip().lower() for n in names]
    unknown = [n for n in header if n not in COLUMNS]
    if unknown:
        raise file_error(
            "unknown_columns", f"unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}"
        )
    missing = [n for n in REQUIRED if n not in header]
    if missing:
        raise file_error("missing_columns", f"missing column(s): {', '.join(missing)}")
    if len(set(header)) != len(header):
        raise file_error("duplicate_columns", "a column appears twice in the header")
    return header


def iter_csv(path: Path, encoding: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, cells) per data row; the delimiter (`;` or `,`) sniffed from the header line."""
    with path.open(encoding=encoding, newline="") as text:
        first = text.readline()
        if not first.strip():
            raise file_error("missing_columns", "the file has no header line")
        delimiter = ";" if first.count(";") > first.count(",") else ","
        header = _check_header(next(csv.reader([first], delimiter=delimiter)))
        row_no = 0
        try:
            for cells in csv.reader(text, delimiter=delimiter):
                if not any(c.strip() for c in cells):
                    continue  # blank lines (spreadsheets add them at the end)
                row_no += 1
                if len(cells) > len(header):
                    raise file_error("malformed_row", f"row {row_no} has more cells than the header")
                yield row_no, dict(zip(header, (c.strip() for c in cells), strict=False))
        except csv.Error as exc:
            raise file_error("malformed_csv", f"after row {row_no}: {exc}") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, fields) per line: a JSON object with the CSV's column names (values strings)."""
    with path.open(encoding="utf-8-sig") as text:
        row_no = 0
        for line in text:
            if not line.strip():
                continue
            row_no += 1
            try:
                value = msgspec.json.decode(line)
            except msgspec.DecodeError:
                raise file_error("malformed_json", f"line {row_no} is not JSON") from None
            if not isinstance(value, dict):
                raise file_error("malformed_json", f"line {row_no} is not a JSON object")
            _check_header(list(value))
            yield row_no, {k.lower(): "" if v is None else str(v).strip() for k, v in value.items()}


def rows_of(path: Path, fmt: Format, encoding: str) -> Iterator[tuple[int, dict[str, str]]]:
    return iter_csv(path, encoding) if fmt == "csv" else iter_jsonl(path)


def check_file(path: Path, fmt: Format) -> tuple[str, int]:
    """(encoding, rows): one streaming pass that refuses a malformed file before anything is applied."""
    encoding = detect_encoding(path) if fmt == "csv" else "utf-8"
    if fmt == "jsonl":
        try:
            with path.open("rb") as raw:
                decoder = codecs.getincrementaldecoder("utf-8")("strict")
                while chunk := raw.read(1 << 20):
                    decoder.decode(chunk)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise file_error("broken_encoding", "JSON Lines must be UTF-8") from None
    total = 0
    for total, _ in rows_of(path, fmt, encoding):  # the count is the last row number
        if total > MAX_ROWS:
            raise file_error("too_many_rows", f"the file has more than {MAX_ROWS} rows; split it")
    if total == 0:
        raise file_error("empty_file", "the file has no rows")
    return encoding, total


# --- one row --------------------------------------------------------------------------------------------


class Row(msgspec.Struct, kw_only=True):
    """A validated row: what it binds, and the hash of that content (the same binding from a CSV in
    either encoding or from JSON Lines hashes the same)."""

    number: str
    kind: str
    device: dict[str, str | None] | None = None
    employee: EmployeeData | None = None


def _date(value: str) -> str:
    match = _RU_DATE.match(value)
    return f"{match[3]}-{match[2]}-{match[1]}" if match else value


def _convert_error(exc: msgspec.ValidationError, prefix: str) -> Invalid:
    # msgspec says "... - at `$.type`"; the file's column is the single-SIM field's column.
    found = re.search(r"at `\$\.([a-z_]+)`", str(exc))
    column = _COLUMN_OF.get(f"{prefix}.{found[1]}", found[1]) if found else "kind"
    return Invalid("invalid_value", str(exc).split(" - at ")[0], field=column)


def validate_row(sims: CorporateSims, cells: dict[str, str]) -> Row:
    """The single-SIM API's validators over one row; Invalid names the file's column."""
    number = _e164(cells.get("number", ""), "number")
    kind = cells.get("kind", "").lower()
    if kind == "device":
        raw = {
            "type": cells.get("device_type", ""),
            "name": cells.get("device_name", ""),
            "imei": cells.get("imei") or None,
            "mac": cells.get("mac") or None,
            "installation_address": cells.get("installation_address") or None,
        }
        try:
            device = msgspec.convert(raw, DeviceData)
        except msgspec.ValidationError as exc:
            raise _convert_error(exc, "device") from None
        return Row(number=number, kind=kind, device=_check_device(device))
    if kind == "employee":
        data: dict[str, Any] = {c: cells.get(c, "") for c in EMPLOYEE_COLUMNS}
        for name in ("birth_date", "passport_issue_date"):
            data[name] = _date(data[name])
        try:
            employee = msgspec.convert(data, EmployeeData, strict=False)
        except msgspec.ValidationError as exc:
            raise _convert_error(exc, "employee") from None
        sims._check_employee(employee, number)
        return Row(number=number, kind=kind, employee=employee)
    raise Invalid("invalid_kind", "kind must be device or employee", field="kind")


def row_hash(row: Row) -> bytes:
    return hashlib.sha256(msgspec.json.encode(row, order="deterministic")).digest()


# --- jobs -----------------------------------------------------------------------------------------------


class BulkJobView(msgspec.Struct, kw_only=True, frozen=True):
    """An upload's progress. `done` counts decided rows: applied + unchanged + errors."""

    id: uuid.UUID
    state: Literal["queued", "running", "done", "failed"]
    format: Format
    total: int
    done: int
    applied: int
    unchanged: int
    errors: int
    failure: str
    created_at: dt.datetime
    finished_at: dt.datetime | None
    report_url: str


JOB_NOT_FOUND = "No bulk upload with this id"


def job_view(job: bulk_store.JobRow) -> BulkJobView:
    return BulkJobView(
        id=job.id,
        state=job.state,  # type: ignore[arg-type]  # the table's check constraint
        format=job.format,  # type: ignore[arg-type]
        total=job.total,
        done=job.done,
        applied=job.applied,
        unchanged=job.unchanged,
        errors=job.errors,
        failure=job.failure,
        created_at=job.created_at,
        finished_at=job.finished_at,
        report_url=f"/v1/corporate/bulk-uploads/{job.id}/report.csv",
    )


@dataclass(slots=True)
class BulkUploads:
    """Accepts checked files as jobs and runs them in this process, one task per job."""

    sims: CorporateSims
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def pool(self) -> db.Pool:
        return self.sims.pool

    async def submit(self, caller: Caller, path: Path, fmt: Format) -> BulkJobView:
        """Check the whole file (Invalid, nothing applied, when malformed), then start its job. The job
        owns `path` from here on (it deletes it)."""
        try:
            encoding, total = await asyncio.to_thread(check_file, path, fmt)
        except BaseException:
            await asyncio.to_thread(path.unlink, missing_ok=True)
            raise
        job = bulk_store.JobRow(
            id=uuid.uuid4(),
            company_id=caller.company_id,
            actor=caller.client_id,
            state="queued",
            format=fmt,
            total=total,
            done=0,
            applied=0,
            unchanged=0,
            errors=0,
            failure="",
            created_at=self.sims._now(),
            finished_at=None,
        )
        async with self.pool.acquire() as conn:
            await bulk_store.insert_job(conn, job)
        task = asyncio.create_task(self._run(job, path, encoding), name=f"bulk-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job_view(job)

    async def get(self, caller: Caller, job_id: uuid.UUID) -> BulkJobView:
        async with self.pool.acquire() as conn:
            job = await bulk_store.get_job(conn, caller.company_id, job_id)
        if job is None:
            raise NotFound("bulk_upload_not_found", JOB_NOT_FOUND, field="job_id")
        return job_view(job)

    async def report(self, caller: Caller, job_id: uuid.UUID) -> Any:
        """The per-row report as CSV lines (rows that were not applied: errors and unchanged rows)."""
        await self.get(caller, job_id)  # 404 for another company's job

        async def lines() -> Any:
            yield "row,outcome,field,reason\r\n"
            after = 0
            while True:
                async with self.pool.acquire() as conn:
                    rows = await bulk_store.report_rows(conn, job_id, after, 5000)
                if not rows:
                    return
                for r in rows:
                    reason = r["reason"].replace('"', '""')
                    yield f'{r["row_no"]},{r["outcome"]},{r["field"]},"{reason}"\r\n'
                after = rows[-1]["row_no"]

        return lines()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait(self) -> None:
        """Until every running job has finished (tests and the benchmark)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- the job --------------------------------------------------------------------------------------

    async def _run(self, job: bulk_store.JobRow, path: Path, encoding: str) -> None:
        try:
            async with self.pool.acquire() as conn:
                await bulk_store.set_job_state(conn, job.id, "running")
            started = time.perf_counter()
            await self._stage(job, path, encoding)
            staged = time.perf_counter()
            for first in range(1, job.total + 1, CHUNK_ROWS):
                await self._apply_chunk(job, first, min(first + CHUNK_ROWS - 1, job.total))
            log.info(
                "bulk upload %s: %d rows staged in %.2f s, applied in %.2f s",
                job.id,
                job.total,
                staged - started,
                time.perf_counter() - staged,
            )
            async with self.pool.acquire() as conn:
                await bulk_store.forget_payloads(conn, job.id)
                await bulk_store.set_job_state(conn, job.id, "done", at=self.sims._now())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("bulk upload %s failed", job.id)
            async with self.pool.acquire() as conn:
                await bulk_store.set_job_state(
                    conn, job.id, "failed", failure=type(exc).__name__, at=self.sims._now()
                )
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _stage(self, job: bulk_store.JobRow, path: Path, encoding: str) -> None:
        """Validate each row and COPY them in chunks: memory holds one chunk, never the file."""
        protector = self.sims.protector
        chunk: list[tuple[Any, ...]] = []
        async with db.transaction(self.pool) as conn:
            for row_no, cells in rows_of(path, job.format, encoding):  # type: ignore[arg-type]
                try:
                    row = validate_row(self.sims, cells)
                except DomainError as exc:
                    column = _COLUMN_OF.get(exc.field or "", exc.field or "")
                    chunk.append((job.id, row_no, *([None] * 9), "error", column, exc.message))
                else:
                    device = row.device or {}
                    chunk.append(
                        (
                            job.id,
                            row_no,
                            protector.blind_index(row.number, store.MSISDN_INDEX),
                            row.kind,
                            row_hash(row),
                            protector.encrypt(msgspec.json.encode(row).decode(), BULK_CONTEXT, job.id),
                            device.get("device_type"),
                            device.get("device_name"),
                            device.get("device_id_kind"),
                            device.get("device_id"),
                            device.get("installation_address"),
                            "pending",
                            "",
                            "",
                        )
                    )
                if len(chunk) >= CHUNK_ROWS:
                    await bulk_store.copy_rows(conn, chunk)
                    chunk = []
            if chunk:
                await bulk_store.copy_rows(conn, chunk)
            await bulk_store.mark_duplicates(conn, job.id)

    async def _apply_chunk(self, job: bulk_store.JobRow, first: int, last: int) -> None:
        now = self.sims._now()
        decided: dict[int, tuple[str, str, str]] = {}
        slow: list[Any] = []
        async with db.transaction(self.pool) as conn:
            await bulk_store.mark_not_on_contract(
                conn, job.id, job.company_id, first, last, reason=SIM_NOT_FOUND
            )
            rows = await bulk_store.lock_chunk(conn, job.id, job.company_id, first, last)
            fast: list[tuple[Any, Any]] = []
            for r in rows:
                if r["same_row"]:
                    decided[r["row_no"]] = ("unchanged", "", "the same row was applied before")
                elif r["kind"] != "device" or r["case_id"] is not None:
                    slow.append(r)  # an employee, or a device replacing an employee's pending case
                elif r["binding"] == "device" and r["status"] != "rejected" and _same_device(r):
                    decided[r["row_no"]] = ("unchanged", "", "the SIM has this binding already")
                else:
                    verb = "rebind" if r["status"] != "unregistered" else "bind"
                    action: Action = f"{verb}_device"  # type: ignore[assignment]
                    try:
                        outcome = transition(r["status"], r["binding"], action)
                    except DomainError as exc:
                        decided[r["row_no"]] = ("error", exc.field or "", exc.message)
                        continue
                    fast.append((r, outcome))
            if fast:
                await self._write_device_bindings(conn, job, fast, now)
                for r, _ in fast:
                    decided[r["row_no"]] = ("applied", "", "")
            await self._outcomes(conn, job.id, decided)
        decided = {}
        caller = Caller(company_id=job.company_id, client_id=job.actor, scopes=frozenset({SCOPE_WRITE}))
        for r in slow:
            decided[r["row_no"]] = await self._one_row(caller, job, r)
        async with db.transaction(self.pool) as conn:
            await self._outcomes(conn, job.id, decided)
            await bulk_store.count_progress(conn, job.id, first, last)

    async def _write_device_bindings(
        self, conn: db.Connection, job: bulk_store.JobRow, fast: list[tuple[Any, Any]], now: dt.datetime
    ) -> None:
        names = ("device_type", "device_name", "device_id_kind", "device_id", "installation_address")
        columns: dict[str, list[Any]] = {
            "id": [r["sim_id"] for r, _ in fast],
            "version": [r["version"] for r, _ in fast],
            "status": [o.status for _, o in fast],
            **{n: [r[n] for r, _ in fast] for n in names},
        }
        written = {
            rec["id"]: rec["version"]
            for rec in await bulk_store.apply_device_bindings(conn, job.company_id, columns, now)
        }
        if len(written) != len(fast):  # every SIM was locked at the version read: this cannot happen
            raise RuntimeError("a locked SIM changed during its bulk update")
        events = [
            CorpSimBound(
                sim_id=r["sim_id"],
                company_id=job.company_id,
                state=o.status,
                version=written[r["sim_id"]],
                msisdn_masked=r["msisdn_masked"],
                occurred_at=now,
                binding="device",
                rebound=o.rebound,
            )
            for r, o in fast
        ]
        ids, subjects, payloads = outbox.as_columns(*events)
        await conn.execute(outbox.insert_from_columns("$1", "$2", "$3"), ids, subjects, payloads)
        await bulk_store.add_timeline(
            conn,
            job.company_id,
            [r["sim_id"] for r, _ in fast],
            ["rebound" if o.rebound else "bound" for _, o in fast],
            [
                json.dumps(
                    {
                        "from": r["status"],
                        "to": o.status,
                        "binding": "device",
                        "version": written[r["sim_id"]],
                        "bulk_upload": str(job.id),
                        "row": r["row_no"],
                    }
                )
                for r, o in fast
            ],
            actor=f"client:{job.actor}",
            at=now,
        )
        await bulk_store.remember_applied(
            conn,
            job.company_id,
            [r["sim_id"] for r, _ in fast],
            [bytes(r["row_hash"]) for r, _ in fast],
            [written[r["sim_id"]] for r, _ in fast],
        )

    async def _one_row(self, caller: Caller, job: bulk_store.JobRow, r: Any) -> tuple[str, str, str]:
        """A row the single-SIM use case applies (its own transaction: the row is atomic)."""
        row = msgspec.json.decode(
            self.sims.protector.decrypt(bytes(r["payload_enc"]), BULK_CONTEXT, job.id), type=Row
        )
        request = BindingRequest(
            employee=row.employee,
            device=None if row.device is None else _device_data(row.device),
        )
        try:
            view, changed = await self.sims.bind(caller, row.number, request, replace=True)
        except DomainError as exc:
            return "error", _COLUMN_OF.get(exc.field or "", exc.field or ""), exc.message
        async with self.pool.acquire() as conn:
            await bulk_store.remember_applied(
                conn, job.company_id, [r["sim_id"]], [bytes(r["row_hash"])], [view.version]
            )
        return ("applied", "", "") if changed else ("unchanged", "", "the SIM has this binding already")

    async def _outcomes(
        self, conn: db.Connection, job_id: uuid.UUID, decided: dict[int, tuple[str, str, str]]
    ) -> None:
        if decided:
            nos = list(decided)
            await bulk_store.set_outcomes(
                conn,
                job_id,
                row_nos=nos,
                outcomes=[decided[n][0] for n in nos],
                fields=[decided[n][1] for n in nos],
                reasons=[decided[n][2] for n in nos],
            )


def _same_device(r: Any) -> bool:
    names = ("device_type", "device_name", "device_id_kind", "device_id", "installation_address")
    return all(r[n] == r[f"s_{n}"] for n in names)


def _device_data(device: dict[str, str | None]) -> DeviceData:
    kind, identifier = device.get("device_id_kind"), device.get("device_id")
    return DeviceData(
        type=device["device_type"],  # type: ignore[arg-type]  # checked when staged
        name=device["device_name"] or "",
        imei=identifier if kind == "imei" else None,
        mac=identifier if kind == "mac" else None,
        installation_address=device.get("installation_address"),
    )
