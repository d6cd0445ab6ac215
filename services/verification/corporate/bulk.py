"""Bulk upload of SIM bindings: a CSV or JSON Lines file staged by COPY, then applied set-based as a job.

The upload (a temp file, never all in memory) is decoded strictly once, then parsed, validated with the
single-SIM API's own validators and COPYed into `bulk_rows` a chunk at a time, all in the transaction that
creates the job: a malformed file (encoding, columns, row count) rolls it back, so nothing of it exists.
From then on the job lives in PostgreSQL alone, and bulk_apply decides it a chunk per transaction, its
progress committed with its effects. A job whose process stopped is resumed by any replica's resume loop,
claimed by a session advisory lock (freed by PostgreSQL the moment the holder's connection ends).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import datetime as dt
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import phonenumbers
from phonenumbers import PhoneNumberType

from services.common import db
from services.common.domain_errors import DomainError, Invalid, NotFound
from services.verification.corporate import bulk_store, store
from services.verification.corporate.bulk_apply import BULK_CONTEXT, StagedRow, apply_chunk
from services.verification.corporate.oauth import Caller
from services.verification.corporate.schemas import DeviceData, EmployeeData
from services.verification.corporate.usecases import (
    HOLDER_FIELDS,
    CorporateSims,
    _check_device,
    _e164,
    passport_key,
)

log = logging.getLogger(__name__)

Format = Literal["csv", "jsonl"]
MAX_ROWS = 100_000
# 100 000 rows of an employee export are ~25 MB; the limit leaves room and stops a 200 MB body early.
MAX_BYTES = 64 * 1024 * 1024
# Rows per COPY and per apply transaction: few round trips, a bounded transaction, memory of one chunk.
CHUNK_ROWS = 4000
# How often a process looks for jobs nobody runs (a stopped replica's); it also looks once at start.
RESUME_EVERY_S = 10.0

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


def check_encoding(path: Path, fmt: Format) -> str:
    """The file's text encoding (one strict decoding pass), or the file's one error."""
    if fmt == "csv":
        return detect_encoding(path)
    try:
        with path.open("rb") as raw:
            decoder = codecs.getincrementaldecoder("utf-8")("strict")
            while chunk := raw.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise file_error("broken_encoding", "JSON Lines must be UTF-8") from None
    return "utf-8"


# --- one row --------------------------------------------------------------------------------------------

# What the staged payload holds (an employee row's number and person, encrypted) and what the row's content
# hash is computed over (the same binding from a CSV in either encoding or from JSON Lines hashes the same).
Row = StagedRow

_RU_E164 = re.compile(r"\+7[1-9]\d{9}")
# parse_phone's rule: only numbers a person answers.
_CALLABLE = frozenset(
    {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
)


def bulk_e164(raw: str) -> str:
    """_e164 for a file's column, with a shortcut for what an export mostly holds, a Russian number already
    in E.164: that skips parsing and asks phonenumbers only its type (a tenth of parse_phone's time). The
    shortcut only ever accepts; anything it does not accept takes the full way (and gets its message)."""
    if _RU_E164.fullmatch(raw):
        parsed = phonenumbers.PhoneNumber(country_code=7, national_number=int(raw[2:]))
        # +7 is also Kazakhstan's: the region is asked, as parse_phone asks it.
        if (
            phonenumbers.region_code_for_number(parsed) == "RU"
            and phonenumbers.number_type(parsed) in _CALLABLE
        ):
            return raw
    return _e164(raw, "number")


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
    number = bulk_e164(cells.get("number", ""))
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


_hash_encoder = msgspec.json.Encoder(order="deterministic")


def row_hash(row: Row) -> bytes:
    return hashlib.sha256(_hash_encoder.encode(row)).digest()


def staged_chunks(
    sims: CorporateSims, job_id: uuid.UUID, path: Path, fmt: Format, encoding: str
) -> Iterator[list[tuple[Any, ...]]]:
    """The file's rows as staging records (bulk_store.STAGING_COLUMNS), CHUNK_ROWS at a time; a row that
    fails validation is staged as its error. Raises the file's one error (too many rows, no rows, ...).

    Device rows carry no personal data and are staged in the clear; an employee row's payload (the number
    and the person) is staged encrypted, with the person's blind index for the limit check."""
    protector = sims.protector
    chunk: list[tuple[Any, ...]] = []
    row_no = 0
    for row_no, cells in rows_of(path, fmt, encoding):
        if row_no > MAX_ROWS:
            raise file_error("too_many_rows", f"the file has more than {MAX_ROWS} rows; split it")
        try:
            row = validate_row(sims, cells)
        except DomainError as exc:
            column = _COLUMN_OF.get(exc.field or "", exc.field or "")
            chunk.append((job_id, row_no, *([None] * 9), "error", column, exc.message, None))
        else:
            index = protector.blind_index(row.number, store.MSISDN_INDEX)
            if row.device is not None:
                d = row.device
                chunk.append(
                    (
                        job_id,
                        row_no,
                        index,
                        row.kind,
                        row_hash(row),
                        None,
                        d["device_type"],
                        d["device_name"],
                        d["device_id_kind"],
                        d["device_id"],
                        d["installation_address"],
                        "pending",
                        "",
                        "",
                        None,
                    )
                )
            else:
                employee = row.employee
                assert employee is not None  # validate_row gives one of the two
                person = protector.blind_index(
                    passport_key(employee.passport_series, employee.passport_number), store.PASSPORT_INDEX
                )
                payload = protector.encrypt(msgspec.json.encode(row).decode(), BULK_CONTEXT, job_id)
                staged = (job_id, row_no, index, row.kind, row_hash(row), payload)
                chunk.append((*staged, None, None, None, None, None, "pending", "", "", person))
        if len(chunk) >= CHUNK_ROWS:
            yield chunk
            chunk = []
    if row_no == 0:
        raise file_error("empty_file", "the file has no rows")
    if chunk:
        yield chunk


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
    """Stages checked files as jobs and runs jobs (this process's own and any that nobody runs)."""

    sims: CorporateSims
    # Jobs run on the worker pool (one connection each, held for the job: it carries the job's lock).
    jobs_pool: db.Pool | None = None
    resume_every_s: float = RESUME_EVERY_S
    _tasks: dict[uuid.UUID, asyncio.Task[None]] = field(default_factory=dict)
    _loop: asyncio.Task[None] | None = None
    # One job at a time per process: a job holds a worker connection, and chunks are CPU-bound anyway.
    _one_at_a_time: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))

    @property
    def pool(self) -> db.Pool:
        return self.sims.pool

    async def submit(self, caller: Caller, path: Path, fmt: Format) -> BulkJobView:
        """Stage the whole file as a new job (Invalid, nothing kept, when the file is malformed), then
        start it. Deletes `path`."""
        job = bulk_store.JobRow(
            id=uuid.uuid4(),
            company_id=caller.company_id,
            actor=caller.client_id,
            state="queued",
            format=fmt,
            total=0,
            done=0,
            applied=0,
            unchanged=0,
            errors=0,
            failure="",
            created_at=self.sims._now(),
            finished_at=None,
        )
        try:
            encoding = await asyncio.to_thread(check_encoding, path, fmt)
            async with db.transaction(self.pool) as conn:
                await bulk_store.insert_job(conn, job)
                chunks = staged_chunks(self.sims, job.id, path, fmt, encoding)
                total = 0
                # Parsing and validating are CPU work: a chunk at a time off the event loop.
                while chunk := await asyncio.to_thread(next, chunks, None):
                    await bulk_store.copy_rows(conn, chunk)
                    total = chunk[-1][1]
                await bulk_store.mark_duplicates(conn, job.id)
                await bulk_store.set_total(conn, job.id, total)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        self._start(job.id)
        return job_view(msgspec.structs.replace(job, total=total))

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

    async def start(self) -> None:
        """Resume jobs a stopped process left (now, then every `resume_every_s`)."""
        self._loop = asyncio.create_task(self._resume_loop(), name="bulk-resume")

    async def stop(self) -> None:
        """Stop running jobs where they are: each resumes from its last committed chunk, here or elsewhere."""
        tasks = [*self._tasks.values(), *([self._loop] if self._loop is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait(self) -> None:
        """Until every job this process has started has finished (tests and the benchmark)."""
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    # --- the job --------------------------------------------------------------------------------------

    def _start(self, job_id: uuid.UUID) -> None:
        if job_id in self._tasks:
            return
        task = asyncio.create_task(self._run(job_id), name=f"bulk-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def _resume_loop(self) -> None:
        while True:
            try:
                async with (self.jobs_pool or self.pool).acquire() as conn:
                    found = await bulk_store.unfinished_jobs(conn, 100)
                for job_id in found:
                    self._start(job_id)  # a job another process holds is skipped by its lock
            except Exception:  # a failed look is retried at the next interval
                log.exception("looking for bulk uploads to resume failed")
            await asyncio.sleep(self.resume_every_s)

    async def _run(self, job_id: uuid.UUID) -> None:
        async with self._one_at_a_time, (self.jobs_pool or self.pool).acquire() as conn:
            if not await bulk_store.try_lock_job(conn, job_id):
                return  # another process runs it
            try:
                await self._run_locked(conn, job_id)
            finally:
                with contextlib.suppress(Exception):  # the pool's reset unlocks too
                    await bulk_store.unlock_job(conn, job_id)

    async def _run_locked(self, conn: db.Connection, job_id: uuid.UUID) -> None:
        job = await bulk_store.job_by_id(conn, job_id)
        if job is None or job.state not in ("queued", "running"):
            return  # finished meanwhile (it was listed before another process's last chunk)
        if job.next_row > 1:
            log.info("bulk upload %s resumed at row %d of %d", job.id, job.next_row, job.total)
        try:
            await bulk_store.set_job_state(conn, job.id, "running")
            started = time.perf_counter()
            for first in range(job.next_row, job.total + 1, CHUNK_ROWS):
                last = min(first + CHUNK_ROWS - 1, job.total)
                await apply_chunk(self.sims, conn, job, first=first, last=last, column_of=_COLUMN_OF)
            async with conn.transaction():
                await bulk_store.forget_payloads(conn, job.id)
                await bulk_store.set_job_state(conn, job.id, "done", at=self.sims._now())
            log.info(
                "bulk upload %s: %d rows applied in %.2f s", job.id, job.total, time.perf_counter() - started
            )
        except asyncio.CancelledError:
            raise  # stopped: the job stays running and is resumed
        except Exception as exc:
            log.exception("bulk upload %s failed", job.id)
            await bulk_store.set_job_state(
                conn, job.id, "failed", failure=type(exc).__name__, at=self.sims._now()
            )
