"""The jobs store: one SQLite database for uploaded files, fine-tuning jobs and their events,
next to the files and job directories it describes.

    <dir>/jobs.db          files, jobs, job events
    <dir>/files/<id>.jsonl an uploaded file, normalised (OpenAI chat JSONL, images inline)
    <dir>/jobs/<id>/       a job: train.yaml, train.log, run/ (checkpoints, progress.jsonl)

Every status change is one conditional UPDATE (`WHERE status IN (...)`) in the same
transaction as its event, so two parties racing (a cancel and a worker finishing) cannot both
win, and a restart finds each job in the last state it reached.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

JobStatus = Literal[
    "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
]
ACTIVE: tuple[JobStatus, ...] = ("validating_files", "queued", "running", "paused")
TERMINAL: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")
Level = Literal["info", "warn", "error"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    summary TEXT NOT NULL          -- JSON: examples, images, format, digest, warnings
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    name TEXT NOT NULL,            -- the adapter's registry name: fine_tuned_model on success
    request TEXT NOT NULL,         -- JSON: resolved hyperparameters, seed, suffix, metadata
    status TEXT NOT NULL,
    error TEXT,                    -- JSON: code, message, param
    started_at INTEGER,
    finished_at INTEGER,
    pid INTEGER,                   -- the running worker
    attempts INTEGER NOT NULL DEFAULT 0,
    resume INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pause_requested INTEGER NOT NULL DEFAULT 0,
    run_id TEXT,
    experiment_id TEXT,
    version INTEGER,
    trained_tokens INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    created_at REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
"""


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    summary: dict[str, Any]  # examples, images, format, digest, warnings


@dataclass(frozen=True)
class JobRecord:
    id: str
    owner: str
    created_at: int
    model: str
    training_file: str
    validation_file: str | None
    name: str
    request: dict[str, Any]
    status: JobStatus
    error: dict[str, Any] | None = None
    started_at: int | None = None
    finished_at: int | None = None
    pid: int | None = None
    attempts: int = 0
    resume: bool = False
    cancel_requested: bool = False
    pause_requested: bool = False
    run_id: str | None = None
    experiment_id: str | None = None
    version: int | None = None
    trained_tokens: int | None = None


@dataclass(frozen=True)
class JobEvent:
    seq: int
    job_id: str
    created_at: float
    level: Level
    message: str
    data: dict[str, Any] | None = field(default=None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class JobStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.files_dir = directory / "files"
        self.jobs_dir = directory / "jobs"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.path = directory / "jobs.db"
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            _add_missing_columns(db)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One connection and one transaction per call: safe from any thread."""
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    # --- files --------------------------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / f"{file_id}.jsonl"

    def add_file(self, record: FileRecord) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.owner,
                    record.filename,
                    record.purpose,
                    record.bytes,
                    record.created_at,
                    json.dumps(record.summary),
                ),
            )

    def get_file(self, file_id: str, owner: str) -> FileRecord | None:
        with self._db() as db:
            row = db.execute(
                "SELECT * FROM files WHERE id = ? AND owner = ?", (file_id, owner)
            ).fetchone()
        return _file(row) if row else None

    def list_files(
        self, owner: str, purpose: str | None, after: str | None, limit: int
    ) -> tuple[list[FileRecord], bool]:
        """Newest first; `after` is the id of the last file of the previous page."""
        query, args = "SELECT * FROM files WHERE owner = ?", [owner]
        if purpose is not None:
            query, args = query + " AND purpose = ?", [*args, purpose]
        rows, more = self._page("files", query, args, after, limit)
        return [_file(row) for row in rows], more

    def delete_file(self, file_id: str, owner: str) -> bool:
        with self._db() as db:
            deleted = db.execute(
                "DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner)
            ).rowcount
        if deleted:
            self.file_path(file_id).unlink(missing_ok=True)
        return bool(deleted)

    def active_job_using(self, file_id: str) -> str | None:
        """The id of a job that has not finished and reads `file_id`."""
        marks = ", ".join("?" * len(ACTIVE))
        with self._db() as db:
            row = db.execute(
                f"SELECT id FROM jobs WHERE status IN ({marks}) "
                "AND (training_file = ? OR validation_file = ?) LIMIT 1",
                (*ACTIVE, file_id, file_id),
            ).fetchone()
        return row["id"] if row else None

    # --- jobs ---------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def add_job(self, job: JobRecord, message: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO jobs (id, owner, created_at, model, training_file, "
                "validation_file, name, request, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.owner,
                    job.created_at,
                    job.model,
                    job.training_file,
                    job.validation_file,
                    job.name,
                    json.dumps(job.request),
                    job.status,
                ),
            )
            _add_event(db, job.id, "info", message)

    def get_job(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        """The job; with `owner`, only if it belongs to that key."""
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (owner is not None and row["owner"] != owner):
            return None
        return _job(row)

    def list_jobs(
        self,
        owner: str,
        after: str | None,
        limit: int,
        metadata: dict[str, str] | None = None,
    ) -> tuple[list[JobRecord], bool]:
        """The owner's jobs, newest first; with `metadata`, those whose metadata has every
        KEY: VALUE of it (an empty dict: those without metadata)."""
        query = "SELECT * FROM jobs WHERE owner = ?"
        if metadata is None:
            rows, more = self._page("jobs", query, [owner], after, limit)
            return [_job(row) for row in rows], more
        with self._db() as db:
            rows = db.execute(query + " ORDER BY rowid DESC", [owner]).fetchall()
        ids = [row["id"] for row in rows]
        if after is not None:  # the jobs older than `after`, as the unfiltered listing pages
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        jobs = [job for job in map(_job, rows) if _metadata_matches(job, metadata)]
        return jobs[:limit], len(jobs) > limit

    def jobs_in(self, *statuses: JobStatus) -> list[JobRecord]:
        """Jobs in any of `statuses`, oldest first (the queue order)."""
        marks = ", ".join("?" * len(statuses))
        with self._db() as db:
            rows = db.execute(
                f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY rowid", statuses
            ).fetchall()
        return [_job(row) for row in rows]

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        from_: tuple[JobStatus, ...],
        message: str,
        level: Level = "info",
        **fields: Any,
    ) -> bool:
        """Move the job to `to` if it is in one of `from_`, set `fields` and record the event,
        atomically. False when the job was not in `from_` (someone else moved it first)."""
        if to in TERMINAL:
            fields.setdefault("finished_at", int(time.time()))
        fields = {key: _column(value) for key, value in fields.items()}
        assignments = ", ".join(["status = ?", *(f"{key} = ?" for key in fields)])
        marks = ", ".join("?" * len(from_))
        with self._db() as db:
            moved = db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks})",
                (to, *fields.values(), job_id, *from_),
            ).rowcount
            if moved:
                _add_event(db, job_id, level, message)
        return bool(moved)

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields that are not the status (run id, worker pid, cancel request)."""
        assignments = ", ".join(f"{key} = ?" for key in fields)
        values = [_column(value) for value in fields.values()]
        with self._db() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))

    # --- events -------------------------------------------------------------------------------

    def add_event(self, job_id: str, message: str, level: Level = "info", data=None) -> None:
        with self._db() as db:
            _add_event(db, job_id, level, message, data)

    def events(self, job_id: str) -> list[JobEvent]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM events WHERE job_id = ? ORDER BY seq", (job_id,)
            ).fetchall()
        return [
            JobEvent(
                row["seq"],
                row["job_id"],
                row["created_at"],
                row["level"],
                row["message"],
                json.loads(row["data"]) if row["data"] else None,
            )
            for row in rows
        ]

    # --- paging -------------------------------------------------------------------------------

    def _page(
        self, table: str, query: str, args: list, after: str | None, limit: int
    ) -> tuple[list[sqlite3.Row], bool]:
        """Rows newest first, starting after the row with id `after`; one extra row is read to
        tell whether there are more."""
        if after is not None:
            query += f" AND rowid < COALESCE((SELECT rowid FROM {table} WHERE id = ?), -1)"
            args = [*args, after]
        query += " ORDER BY rowid DESC LIMIT ?"
        with self._db() as db:
            rows = db.execute(query, (*args, limit + 1)).fetchall()
        return rows[:limit], len(rows) > limit


def _metadata_matches(job: JobRecord, wanted: dict[str, str]) -> bool:
    metadata = job.request.get("metadata") or {}
    if not wanted:
        return not metadata
    return all(metadata.get(key) == value for key, value in wanted.items())


def _add_event(db: sqlite3.Connection, job_id: str, level: str, message: str, data=None) -> None:
    db.execute(
        "INSERT INTO events (job_id, created_at, level, message, data) VALUES (?, ?, ?, ?, ?)",
        (job_id, time.time(), level, message, json.dumps(data) if data is not None else None),
    )


def _column(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(
        row["id"],
        row["owner"],
        row["filename"],
        row["purpose"],
        row["bytes"],
        row["created_at"],
        json.loads(row["summary"]),
    )


# Columns added after a store was first created: (table, column, definition).
ADDED_COLUMNS = (("jobs", "pause_requested", "INTEGER NOT NULL DEFAULT 0"),)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a store made by an older gemlora up to the schema (SQLite adds columns in place)."""
    for table, column, definition in ADDED_COLUMNS:
        present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def _job(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    values["request"] = json.loads(values["request"])
    values["error"] = json.loads(values["error"]) if values["error"] else None
    values["resume"] = bool(values["resume"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    values["pause_requested"] = bool(values["pause_requested"])
    return JobRecord(**values)
