"""The job runner: takes jobs through validating_files -> queued -> running -> succeeded /
failed / cancelled, training each in a worker process (`gemlora train` on the job's config), at
most `max_concurrent` at once.

It lives in the gateway's event loop but never trains there: a worker is a subprocess that the
loop only starts, watches (its exit, its run.json) and signals. Cancel is SIGTERM: `gemlora
train` stops within the current step, marks its MLflow run KILLED and registers nothing.

State lives in the store, so a restarted gateway carries on: queued jobs run, and a job that
was running when the gateway stopped resumes from its last checkpoint (`gemlora train
--resume`, same MLflow run), or is marked failed with the reason when resuming is off or it has
been interrupted too often.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from gemlora.bases import resolve_base
from gemlora.paths import gemlora_home
from gemlora.run_events import Failed, Paused
from gemlora.rundir import clear_pause_request, last_checkpoint_step, request_pause
from gemlora.serve.auth import KEYS_ENV
from gemlora.serve.jobs.config import JobsConfig
from gemlora.serve.jobs.progress import (
    final_event,
    reached_step,
    read_progress,
    results_csv,
    run_state,
    trained_tokens,
)
from gemlora.serve.jobs.store import FileRecord, JobRecord, JobStore
from gemlora.train.config import TrainConfig, load_config

logger = logging.getLogger("gemlora.jobs")

TRAIN_CONFIG = "train.yaml"
TRAIN_LOG = "train.log"
RUN_DIR = "run"


class StoreInUse(RuntimeError):
    """Another gateway already runs the jobs of this store."""


@dataclass
class Worker:
    """A `gemlora train` process and the task watching it."""

    job_id: str
    process: asyncio.subprocess.Process
    watcher: asyncio.Task | None = field(default=None, repr=False)


class JobRunner:
    def __init__(self, store: JobStore, config: JobsConfig, tracking_uri: str) -> None:
        self.store = store
        self.config = config
        self.tracking_uri = tracking_uri
        self._workers: dict[str, Worker] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._scheduler: asyncio.Task | None = None
        self._lock_file = None

    def trained_base(self, job: JobRecord) -> str:
        """The base the job trains: its `model`, or the base of the adapter it names."""
        return read_job_config(self.store.job_dir(job.id)).base.model

    def run_dir(self, job_id: str) -> Path:
        return self.store.job_dir(job_id) / RUN_DIR

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._take_store()
        for job in self.store.jobs_in("running"):
            await self._stop_leftover_worker(job)
            self._recover(job)
        self._scheduler = asyncio.create_task(self._schedule())

    async def close(self) -> None:
        """Stop scheduling and stop the workers. Their jobs stay `running` in the store: the
        next start resumes them."""
        self._closing = True
        self.wake()
        if self._scheduler is not None:
            await self._scheduler  # ends after its current pass: no worker half started
        await asyncio.gather(*(self._stop(worker) for worker in list(self._workers.values())))
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock

    def _take_store(self) -> None:
        lock = (self.store.dir / "runner.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StoreInUse(
                f"another gateway runs the fine-tuning jobs in {self.store.dir}: give each "
                "gateway its own jobs.dir"
            ) from None
        self._lock_file = lock

    def wake(self) -> None:
        """Look at the queue now (a job was created or cancelled)."""
        self._wake.set()

    # --- scheduling ---------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while not self._closing:
            self._wake.clear()
            try:
                for job in self.store.jobs_in("validating_files"):
                    self._validate(job)
                for job in self.store.jobs_in("queued"):
                    if self._closing or len(self._workers) >= self.config.max_concurrent:
                        break
                    await self._start_worker(job)
            except Exception:
                logger.exception("the job scheduler failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval_s)

    def _validate(self, job: JobRecord) -> None:
        """The files were validated on upload; here they are checked against this job: still
        stored, and images only for a multimodal base."""
        base = self.trained_base(job)
        try:
            multimodal = resolve_base(base).multimodal
        except LookupError as error:
            self._fail(job, "invalid_model", str(error), "model", from_=("validating_files",))
            return
        counts = []
        for param in ("training_file", "validation_file"):
            file_id = getattr(job, param)
            if file_id is None:
                continue
            record = self.store.get_file(file_id, job.owner)
            if record is None or not self.store.file_path(file_id).is_file():
                self._fail(
                    job, f"invalid_{param}", f"{param} {file_id} is no longer stored", param,
                    from_=("validating_files",),
                )  # fmt: skip
                return
            images = record.summary["images"]
            if images and not multimodal:
                message = (
                    f"{param} {file_id} has {images} images, but {base} is a text-only "
                    "base: fine-tune a multimodal base, or upload text-only examples"
                )
                self._fail(job, f"invalid_{param}", message, param, from_=("validating_files",))
                return
            counts.append(f"{record.summary['examples']} {param.split('_')[0]} examples")
        self.store.transition(
            job.id,
            "queued",
            from_=("validating_files",),
            message=f"Files validated ({', '.join(counts)}); the job is queued",
        )

    async def _start_worker(self, job: JobRecord) -> None:
        job_dir = self.store.job_dir(job.id)
        command = _train_command(job_dir / TRAIN_CONFIG, *(["--resume"] if job.resume else []))
        verb = (
            f"resumes from step {last_checkpoint_step(self.run_dir(job.id))}"
            if job.resume
            else "starts"
        )
        moved = self.store.transition(
            job.id,
            "running",
            from_=("queued",),
            message=f"Fine-tuning {verb} in a worker process (attempt {job.attempts + 1})",
            started_at=job.started_at or int(time.time()),
            attempts=job.attempts + 1,
            pid=None,
        )
        if not moved:
            return  # cancelled in the meantime
        try:
            with (job_dir / TRAIN_LOG).open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    *command,
                    cwd=job_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_worker_env(),
                    start_new_session=True,  # its own process group, apart from the gateway's
                )
        except OSError as error:
            self._fail(job, "worker_failed", f"the worker did not start: {error}", None)
            return
        self.store.update(job.id, pid=process.pid)
        worker = Worker(job.id, process)
        self._workers[job.id] = worker
        worker.watcher = asyncio.create_task(self._watch(worker))
        if self.store.get_job(job.id).cancel_requested:  # cancelled while it started
            await self._stop(worker)

    async def _watch(self, worker: Worker) -> None:
        exit_code = asyncio.ensure_future(worker.process.wait())
        try:
            while not exit_code.done():
                await asyncio.wait({exit_code}, timeout=self.config.poll_interval_s)
                await self._note_run(worker.job_id)
            await self._note_run(worker.job_id)  # a run that ended within the last poll
            self._finish(worker.job_id, exit_code.result())
        except Exception:
            logger.exception("watching the worker of %s failed", worker.job_id)
        finally:
            self._workers.pop(worker.job_id, None)
            self.wake()

    async def _note_run(self, job_id: str) -> None:
        """Record the job's MLflow run (and its experiment, for links) once it exists."""
        job = self.store.get_job(job_id)
        if job is None or job.experiment_id is not None:
            return
        run_id = job.run_id or run_state(self.run_dir(job_id)).run_id
        if run_id is None:
            return
        experiment_id = await self._experiment_of(run_id)
        if run_id != job.run_id or experiment_id is not None:
            self.store.update(job_id, run_id=run_id, experiment_id=experiment_id)

    async def _experiment_of(self, run_id: str) -> str | None:
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        url = f"{self.tracking_uri.rstrip('/')}/api/2.0/mlflow/runs/get"
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
                response = await client.get(url, params={"run_id": run_id})
            return response.json()["run"]["info"]["experiment_id"]
        except (httpx.HTTPError, KeyError, ValueError):
            return None  # asked again on the next poll

    # --- how a worker ended -------------------------------------------------------------------

    def _finish(self, job_id: str, exit_code: int) -> None:
        job = self.store.get_job(job_id)
        if job is None or job.status != "running":
            return
        run_dir = self.run_dir(job_id)
        if self._succeeded(job):
            return
        if job.pause_requested and self._paused(job):
            return
        if job.cancel_requested:
            self.store.transition(
                job_id,
                "cancelled",
                from_=("running",),
                message=f"Job cancelled at step {_step(run_dir)}; nothing was registered",
            )
            return
        if self._closing:
            then = "continues" if self.config.resume_interrupted else "is marked failed"
            self.store.add_event(
                job_id,
                f"The gateway stopped: training was interrupted at step {_step(run_dir)}; the "
                f"job {then} when the gateway starts again",
                level="warn",
            )
            return
        self._report_log_tail(job)
        if exit_code < 0 and self._retry_killed(job, signal.Signals(-exit_code).name):
            return
        self._fail(job, *self._failure(job, exit_code))

    def _retry_killed(self, job: JobRecord, signal_name: str) -> bool:
        """A worker killed by a signal (the out-of-memory killer's SIGKILL, a crash) is started
        again from its last checkpoint, in the same MLflow run, while attempts remain."""
        run_dir = self.run_dir(job.id)
        step, checkpoint = _step(run_dir), last_checkpoint_step(run_dir)
        if job.attempts >= self.config.max_attempts:
            return False
        where = f"its checkpoint at step {checkpoint}" if checkpoint else "the start"
        return self.store.transition(
            job.id,
            "queued",
            from_=("running",),
            message=f"The training worker was killed by {signal_name} at step {step} (the "
            f"out-of-memory killer sends SIGKILL); it is retried from {where} (attempt "
            f"{job.attempts + 1} of {self.config.max_attempts}, jobs.max_attempts)",
            level="warn",
            resume=run_state(run_dir).config is not None,
            pid=None,
        )

    def _report_log_tail(self, job: JobRecord, lines: int = 5) -> None:
        """The worker's last log lines, for the job's owner (the log stays on the server)."""
        try:
            text = (self.store.job_dir(job.id) / TRAIN_LOG).read_text(errors="replace")
        except OSError:
            return
        for line in text.strip().splitlines()[-lines:]:
            self.store.add_event(job.id, f"Worker log: {self._public(line)}", level="warn")

    def _public(self, text: str) -> str:
        """`text` without the server's paths: stored files by their name (`file-....jsonl`),
        other paths relative to the jobs store or $GEMLORA_HOME."""
        for directory, shown in (
            (self.store.files_dir, ""),
            (self.store.dir, ""),
            (gemlora_home(), "$GEMLORA_HOME/"),
        ):
            text = text.replace(f"{directory}/", shown)
        return text

    def _paused(self, job: JobRecord) -> bool:
        end = final_event(read_progress(self.run_dir(job.id)))
        if not isinstance(end, Paused):
            return False  # the pause came too late: the run ended otherwise
        if end.step == last_checkpoint_step(self.run_dir(job.id)) and end.step > 0:
            how = f"at step {end.step} with a checkpoint"
        else:  # before its first step (of this attempt): nothing new to save
            how = f"before training its first step (step {end.step}): nothing to checkpoint"
        return self.store.transition(
            job.id,
            "paused",
            from_=("running",),
            message=f"Job paused {how}; resume continues it in the same MLflow run",
            pid=None,
        )

    def _succeeded(self, job: JobRecord) -> bool:
        run_dir = self.run_dir(job.id)
        state = run_state(run_dir)
        if state.status != "finished":
            return False
        version = state.version
        self._write_results(job)
        return self.store.transition(
            job.id,
            "succeeded",
            from_=("running",),
            message=f"The job has successfully completed: {job.name} (version {version}) is "
            f"served as model {job.name!r}",
            version=version,
            run_id=state.run_id or job.run_id,
            trained_tokens=trained_tokens(read_progress(run_dir)),
            pid=None,
        )

    def _write_results(self, job: JobRecord) -> None:
        """The per-step metrics as a CSV file of the job's owner (`result_files`)."""
        file_id = result_file_id(job.id)
        if self.store.get_file(file_id, job.owner) is not None:
            return
        content = results_csv(read_progress(self.run_dir(job.id))).encode()
        self.store.file_path(file_id).write_bytes(content)
        summary = {"job": job.id, "rows": content.count(b"\n") - 1}
        record = FileRecord(
            file_id, job.owner, f"{job.id}-results.csv", RESULTS_PURPOSE, len(content),
            int(time.time()), summary,
        )  # fmt: skip
        self.store.add_file(record)

    def _failure(self, job: JobRecord, exit_code: int) -> tuple[str, str, str | None]:
        """(code, message, param) from the worker's last progress event, else how it exited;
        the message names no path of the server."""
        run_dir = self.run_dir(job.id)
        end = final_event(read_progress(run_dir))
        if isinstance(end, Failed):
            error = self._public(end.error)
            if error.startswith("DatasetError"):
                param = "validation_file" if _mentions(error, job.validation_file) else None
                param = param or "training_file"
                return f"invalid_{param}", error.removeprefix("DatasetError: "), param
            return "training_failed", error, None
        if exit_code < 0:
            how = f"was killed by {signal.Signals(-exit_code).name} at step {_step(run_dir)}"
            tries = f" (tried {job.attempts} times, jobs.max_attempts)"
            return "worker_died", f"the training worker {how}{tries}", None
        how = f"exited with code {exit_code} at step {_step(run_dir)}"
        return "training_failed", f"the training worker {how}; see the job's events", None

    def _fail(
        self,
        job: JobRecord,
        code: str,
        message: str,
        param: str | None,
        from_: tuple[str, ...] = ("running",),
    ) -> None:
        self.store.transition(
            job.id,
            "failed",
            from_=from_,
            message=f"Fine-tuning failed: {message}",
            level="error",
            error={"code": code, "message": message, "param": param},
            pid=None,
        )

    # --- stopping -----------------------------------------------------------------------------

    async def cancel(self, job: JobRecord) -> None:
        """Cancel a job: at once if it has not started, else SIGTERM its worker and wait
        until it has stopped (training stops within a step)."""
        waiting = ("validating_files", "queued", "paused")
        when = "while paused" if job.status == "paused" else "before it started"
        if job.status in waiting and self.store.transition(
            job.id, "cancelled", from_=waiting, message=f"Job cancelled {when}"
        ):
            return
        self.store.update(job.id, cancel_requested=True)
        worker = self._workers.get(job.id)
        if worker is not None:
            await self._stop(worker)

    async def pause(self, job: JobRecord) -> None:
        """Ask the running worker to stop at its next safe point (before its first step, or at
        the end of the current one, with a checkpoint) through its run directory, which also
        reaches a worker still starting; returns once it has stopped, or after
        `stop_timeout_s` (the job then pauses when the worker gets there)."""
        self.store.update(job.id, pause_requested=True)
        request_pause(self.run_dir(job.id))
        worker = self._workers.get(job.id)
        if worker is not None:
            await asyncio.wait({worker.watcher}, timeout=self.config.stop_timeout_s)

    def resume(self, job: JobRecord) -> bool:
        """Queue a paused job to continue from its checkpoint, in the same MLflow run."""
        clear_pause_request(self.run_dir(job.id))
        step = last_checkpoint_step(self.run_dir(job.id))
        moved = self.store.transition(
            job.id,
            "queued",
            from_=("paused",),
            message=f"Job resumed: queued to continue from step {step}",
            resume=True,
            pause_requested=False,
        )
        self.wake()
        return moved

    async def _stop(self, worker: Worker) -> None:
        """SIGTERM, then SIGKILL to the whole group after `stop_timeout_s`; returns once the
        watcher has recorded how the job ended."""
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        done, _ = await asyncio.wait({worker.watcher}, timeout=self.config.stop_timeout_s)
        if not done:
            logger.warning("worker of %s ignored SIGTERM; killing it", worker.job_id)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGKILL)
            await worker.watcher

    # --- after a restart ----------------------------------------------------------------------

    async def _stop_leftover_worker(self, job: JobRecord) -> None:
        """A worker of the previous gateway that still runs (the gateway was killed) is
        stopped, so that one process at a time writes the job's run directory."""
        pid = job.pid
        if pid is None or str(self.store.job_dir(job.id)) not in _command_line(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_timeout_s
        while _command_line(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            if _command_line(pid):
                os.killpg(pid, signal.SIGKILL)

    def _recover(self, job: JobRecord) -> None:
        """A job the store says is running, with no worker any more."""
        if self._succeeded(job):
            return
        run_dir = self.run_dir(job.id)
        step, checkpoint = _step(run_dir), last_checkpoint_step(run_dir)
        if job.cancel_requested:
            self.store.transition(
                job.id, "cancelled", from_=("running",), message="Job cancelled", pid=None
            )
        elif not self.config.resume_interrupted:
            message = (
                f"the gateway restarted while the job was running (step {step}) and "
                "jobs.resume_interrupted is off"
            )
            self._fail(job, "interrupted", message, None)
        elif job.attempts >= self.config.max_attempts:
            message = (
                f"interrupted {job.attempts} times (jobs.max_attempts): last stopped at step {step}"
            )
            self._fail(job, "interrupted", message, None)
        else:
            resumable = run_state(run_dir).config is not None  # what --resume continues
            where = f"from its checkpoint at step {checkpoint}" if checkpoint else "from the start"
            self.store.transition(
                job.id,
                "queued",
                from_=("running",),
                message=f"The gateway restarted while this job was running: it continues {where}",
                level="warn",
                resume=resumable,
                pid=None,
            )


def write_job_config(job_dir: Path, config: TrainConfig) -> None:
    """The config the job's worker trains with (`gemlora train JOB_DIR/train.yaml`)."""
    job_dir.mkdir(parents=True)
    (job_dir / TRAIN_CONFIG).write_text(yaml.safe_dump(config.model_dump(mode="json")))


def read_job_config(job_dir: Path) -> TrainConfig:
    return load_config(job_dir / TRAIN_CONFIG)


RESULTS_PURPOSE = "fine-tune-results"


def result_file_id(job_id: str) -> str:
    """The job's result file, named after it: one per job."""
    return f"file-results-{job_id.removeprefix('ftjob-')}"


def _train_command(config: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "gemlora.cli", "train", str(config), *options]


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop(KEYS_ENV, None)  # the gateway's API keys are none of training's business
    env["PYTHONUNBUFFERED"] = "1"
    env["TQDM_DISABLE"] = "1"  # progress is in progress.jsonl; keep train.log readable
    return env


def _step(run_dir: Path) -> int:
    """The last step training reached, from its progress (0 before the first step)."""
    return reached_step(read_progress(run_dir))


def _mentions(error: str, file_id: str | None) -> bool:
    return file_id is not None and file_id in error


def _command_line(pid: int) -> str:
    """The process's command line ('' when there is no such process)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
