"""The OpenAI Files and Fine-tuning Jobs endpoints of the gateway.

    POST   /v1/files                              upload (multipart: file, purpose=fine-tune)
    GET    /v1/files                              list (purpose, after, limit)
    GET    /v1/files/{file_id}                    one file
    GET    /v1/files/{file_id}/content            the stored file (OpenAI chat JSONL)
    DELETE /v1/files/{file_id}                    delete (not while a job uses it)
    POST   /v1/fine_tuning/jobs                   create a job
    GET    /v1/fine_tuning/jobs                   list (after, limit), newest first
    GET    /v1/fine_tuning/jobs/{job_id}          one job
    POST   /v1/fine_tuning/jobs/{job_id}/cancel   cancel it
    GET    /v1/fine_tuning/jobs/{job_id}/events   its events, newest first (after, limit)
    GET    /v1/fine_tuning/jobs/{job_id}/checkpoints

Every route takes the gateway's API keys (and rate limits); files and jobs belong to the key
that created them. Errors are the gateway's OpenAI-shaped errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from gemlora.adapters import (
    AdapterError,
    AdapterNotFoundError,
    AdapterRegistry,
    InvalidRefError,
    RegistryUnavailableError,
)
from gemlora.bases import load_catalogue, resolve_base
from gemlora.data.safe_fetch import ImageFetcher
from gemlora.evals import (
    LabelModelGrader,
    PythonGrader,
    ScoreModelGrader,
    validate_grader,
    walk,
)
from gemlora.serve.auth import ApiKey, Authenticator
from gemlora.serve.errors import GatewayError, registry_unavailable, validation_error
from gemlora.serve.jobs.config import JobsConfig
from gemlora.serve.jobs.files import UploadRejected, ingest, upload_suffix
from gemlora.serve.jobs.progress import (
    checkpoints,
    estimated_finish,
    read_progress,
    training_events,
)
from gemlora.serve.jobs.runner import (
    RESULTS_PURPOSE,
    RUN_DIR,
    JobRunner,
    result_file_id,
    write_job_config,
)
from gemlora.serve.jobs.schema import (
    CreateJobRequest,
    JobVerification,
    TrainSettingsError,
    effective_hyperparameters,
    fine_tuned_model_name,
    job_training_config,
)
from gemlora.serve.jobs.store import FileRecord, JobRecord, JobStore, new_id

PURPOSE = "fine-tune"
COPY_CHUNK = 1024 * 1024


@dataclass
class JobsContext:
    """What the jobs API takes from the gateway that mounts it: its keys and rate limits, its
    registry, the base its engine serves, and its image fetcher (the SSRF policy for uploads);
    the engine verifies each job's registered version."""

    auth: Authenticator
    registry: AdapterRegistry | None
    base: str
    fetcher: ImageFetcher
    engine_url: str | None = None
    engine_dtype: str = "auto"
    python_graders: bool = False  # gateway.graders.python: jobs' eval gates may run user code


def mount_jobs(app: FastAPI, context: JobsContext, config: JobsConfig) -> JobsApi:
    """Add the endpoints to the gateway's app; the job runner starts and stops with the app."""
    api = JobsApi(context, config)
    app.include_router(api.router)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.state.jobs = api
    return api


async def _gateway_error(_request: Request, error: GatewayError) -> JSONResponse:
    return error.response()


class JobsApi:
    def __init__(self, context: JobsContext, config: JobsConfig) -> None:
        registry = context.registry
        if registry is None:
            raise ValueError(
                "fine-tuning jobs register their adapters in the registry: configure one "
                "(the serve config's registry: section) or turn jobs off"
            )
        self.context = context
        self.config = config
        self.tracking_uri = registry.config.tracking_uri
        self.store = JobStore(config.store_dir())
        self.runner = JobRunner(self.store, config, self.tracking_uri)
        self.served_family = _family(context.base)
        self.router = APIRouter(lifespan=self._lifespan, dependencies=[Depends(self.caller)])
        routes = [
            ("/v1/files", self.upload_file, "POST"),
            ("/v1/files", self.list_files, "GET"),
            ("/v1/files/{file_id}", self.get_file, "GET"),
            ("/v1/files/{file_id}/content", self.file_content, "GET"),
            ("/v1/files/{file_id}", self.delete_file, "DELETE"),
            ("/v1/fine_tuning/jobs", self.create_job, "POST"),
            ("/v1/fine_tuning/jobs", self.list_jobs, "GET"),
            ("/v1/fine_tuning/jobs/{job_id}", self.get_job, "GET"),
            ("/v1/fine_tuning/jobs/{job_id}/cancel", self.cancel_job, "POST"),
            ("/v1/fine_tuning/jobs/{job_id}/pause", self.pause_job, "POST"),
            ("/v1/fine_tuning/jobs/{job_id}/resume", self.resume_job, "POST"),
            ("/v1/fine_tuning/jobs/{job_id}/events", self.list_events, "GET"),
            ("/v1/fine_tuning/jobs/{job_id}/checkpoints", self.list_checkpoints, "GET"),
        ]
        for path, endpoint, method in routes:
            self.router.add_api_route(path, endpoint, methods=[method])

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: FastAPI):
        await self.runner.start()
        try:
            yield
        finally:
            await self.runner.close()

    def caller(self, request: Request) -> ApiKey:
        """The gateway's key check and rate limit, as a dependency of every route."""
        key = self.context.auth.authenticate(request.headers.get("authorization"))
        self.context.auth.check_rate(key)
        request.state.key = key
        return key

    # --- files --------------------------------------------------------------------------------

    async def upload_file(self, request: Request) -> JSONResponse:
        key = request.state.key
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.config.max_file_bytes + COPY_CHUNK:
            raise _too_large(self.config.max_file_bytes)
        async with _multipart(request) as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise GatewayError(
                    400, "file: required (multipart field)", param="file", code="invalid_value"
                )
            if purpose != PURPOSE:
                raise GatewayError(
                    400,
                    f"purpose: this gateway stores files for fine-tuning only: use {PURPOSE!r}",
                    param="purpose",
                    code="invalid_value",
                )
            filename = Path(upload.filename or "upload.jsonl").name
            file_id = new_id("file")
            incoming = self.store.dir / "incoming" / file_id
            try:
                path = incoming / f"upload{upload_suffix(filename)}"
                size = await asyncio.to_thread(self._receive, upload, path)
                summary = await asyncio.to_thread(
                    ingest,
                    path,
                    filename,
                    self.store.file_path(file_id),
                    self.context.fetcher,
                )
            except UploadRejected as rejected:
                raise GatewayError(400, str(rejected), param="file", code="invalid_file") from None
            finally:
                shutil.rmtree(incoming, ignore_errors=True)
        record = FileRecord(file_id, key.id, filename, PURPOSE, size, int(time.time()), summary)
        self.store.add_file(record)
        return JSONResponse(file_object(record))

    def _receive(self, upload: UploadFile, path: Path) -> int:
        """Copy the upload to `path` (its own directory: relative image paths resolve to
        nothing); returns its size."""
        path.parent.mkdir(parents=True)
        size = 0
        upload.file.seek(0)
        with path.open("wb") as out:
            while chunk := upload.file.read(COPY_CHUNK):
                size += len(chunk)
                if size > self.config.max_file_bytes:
                    raise _too_large(self.config.max_file_bytes)
                out.write(chunk)
        return size

    async def list_files(self, request: Request) -> JSONResponse:
        after, limit = _page(request, default_limit=100, max_limit=10_000)
        purpose = request.query_params.get("purpose")
        records, more = self.store.list_files(request.state.key.id, purpose, after, limit)
        return _list([file_object(record) for record in records], more)

    async def get_file(self, request: Request, file_id: str) -> JSONResponse:
        return JSONResponse(file_object(self._file(request, file_id)))

    async def file_content(self, request: Request, file_id: str) -> FileResponse:
        record = self._file(request, file_id)
        csv = record.purpose == RESULTS_PURPOSE
        media_type = "text/csv" if csv else "application/jsonl"
        return FileResponse(self.store.file_path(record.id), media_type=media_type)

    async def delete_file(self, request: Request, file_id: str) -> JSONResponse:
        record = self._file(request, file_id)
        user = self.store.active_job_using(record.id)
        if user is not None:
            raise GatewayError(
                409,
                f"file {file_id} is used by fine-tuning job {user}, which has not finished: "
                "cancel it or wait for it to end",
                param="file_id",
                code="file_in_use",
            )
        self.store.delete_file(record.id, record.owner)
        return JSONResponse({"id": record.id, "object": "file", "deleted": True})

    def _file(self, request: Request, file_id: str) -> FileRecord:
        record = self.store.get_file(file_id, request.state.key.id)
        if record is None:
            raise GatewayError(404, f"no file {file_id!r}", param="file_id", code="file_not_found")
        return record

    # --- jobs ---------------------------------------------------------------------------------

    def _check_graders(self, key: ApiKey, config) -> None:
        """A python grader is callers' code: a job's reward or eval gate runs it only where the
        gateway's config allows python graders at all. A judge model is one the caller may
        call."""
        graders = {f"gemlora.eval.graders[{i}]": g for i, g in enumerate(config.eval.graders)}
        if config.method == "reinforcement":  # first: eval.graders defaults to it
            graders = {"method.reinforcement.grader": config.reinforcement.grader} | graders
        for where, grader in graders.items():
            for path, part in walk(validate_grader(grader), where):
                if isinstance(part, PythonGrader) and not self.context.python_graders:
                    raise GatewayError(
                        400,
                        "python graders run callers' code and are off on this gateway (its "
                        "operator can turn them on: gateway.graders.python: true)",
                        param=f"{path}.type",
                        code="python_graders_disabled",
                    )
                if isinstance(part, ScoreModelGrader | LabelModelGrader):
                    self._check_judge(key, part.model, f"{path}.model")

    def _check_judge(self, key: ApiKey, model: str, param: str) -> None:
        if not key.may_use(model):
            raise GatewayError(
                403,
                f"API key {key.id} may not call the judge model {model!r}",
                param=param,
                code="model_not_allowed",
            )

    async def create_job(self, request: Request) -> JSONResponse:
        key: ApiKey = request.state.key
        create = _parse_create(await request.body())
        base_model, init_adapter = await asyncio.to_thread(self._base_of, create.model)
        quantized = self._check_base(base_model, create.model)
        files = {
            param: self._training_file(key, param, getattr(create, param))
            for param in ("training_file", "validation_file")
            if getattr(create, param) is not None
        }
        _check_file_kinds(files, create.method_type)
        job_id = new_id("ftjob")
        name = fine_tuned_model_name(create, job_id)
        if not key.may_use(name):
            raise GatewayError(
                403,
                f"API key {key.id} could not call the fine-tuned model {name!r}: choose a "
                "suffix its model patterns allow",
                param="suffix",
                code="model_not_allowed",
            )
        job_dir = self.store.job_dir(job_id)
        try:
            train_config = job_training_config(
                create,
                base_model=base_model,
                init_adapter=init_adapter,
                quantized_base=quantized,
                name=name,
                train_file=self.store.file_path(files["training_file"].id),
                eval_file=self.store.file_path(files["validation_file"].id)
                if "validation_file" in files
                else None,
                run_dir=job_dir / RUN_DIR,
                tracking_uri=self.tracking_uri,
                job_id=job_id,
                verify_on=self._verify_on(),
            )
        except TrainSettingsError as error:
            raise GatewayError(400, str(error), param=error.param, code="invalid_value") from None
        self._check_graders(key, train_config)
        write_job_config(job_dir, train_config)
        job = JobRecord(
            id=job_id,
            owner=key.id,
            created_at=int(time.time()),
            model=create.model,
            training_file=create.training_file,
            validation_file=create.validation_file,
            name=name,
            request={
                "method": create.method_type,
                "hyperparameters": effective_hyperparameters(train_config, create),
                "seed": train_config.training.seed,
                "suffix": create.suffix,
                "metadata": create.metadata,
            },
            status="validating_files",
        )
        self.store.add_job(job, f"Created fine-tuning job {job_id}: {create.model} -> {name}")
        self.runner.wake()
        return JSONResponse(self.job_object(job))

    def _verify_on(self) -> JobVerification:
        """The gateway's own engine checks each job's version."""
        return JobVerification(
            engine_url=self.context.engine_url,
            engine_base=self.context.base,
            dtype=self.context.engine_dtype,
        )

    def _base_of(self, model: str) -> tuple[str, str | None]:
        """The base a job trains, and the adapter version it starts from: `model` is a
        catalogue base, or an adapter reference (OpenAI allows a fine-tuned model there)."""
        if model in load_catalogue() or self.context.registry is None:
            return model, None
        try:
            version = self.context.registry.lookup(model)
        except (AdapterNotFoundError, InvalidRefError):
            return model, None  # neither: `_check_base` names the catalogue
        except RegistryUnavailableError as error:
            raise registry_unavailable(str(error)) from None
        except AdapterError as error:
            raise GatewayError(
                400, f"model: {error}", param="model", code="invalid_value"
            ) from None
        if version.metadata is None:
            raise GatewayError(
                400,
                f"model: adapter {model!r} was not registered by gemlora (no base recorded); "
                "name a base or a gemlora adapter",
                param="model",
                code="invalid_value",
            )
        return version.metadata.base, f"{version.name}/{version.version}"

    def _check_base(self, base: str, model: str) -> bool:
        """The base must be a catalogue base of the family the engine serves (so that the
        adapter is callable here); returns whether it is quantized."""
        catalogue = load_catalogue()
        if base not in catalogue:
            raise GatewayError(
                400,
                f"model: {model!r} is neither a base in the catalogue ({', '.join(catalogue)}) "
                "nor a registered adapter",
                param="model",
                code="model_not_found",
            )
        try:
            spec = resolve_base(base)
        except LookupError as error:
            raise GatewayError(
                400, f"model: {error}", param="model", code="model_not_built"
            ) from None
        if self.served_family is not None and spec.family != self.served_family:
            raise GatewayError(
                400,
                f"model: this gateway serves the {self.served_family} family; an adapter "
                f"trained on {base} ({spec.family}) could not be called here",
                param="model",
                code="model_not_servable",
            )
        return spec.quantization != "none"

    def _training_file(self, key: ApiKey, param: str, file_id: str) -> FileRecord:
        record = self.store.get_file(file_id, key.id)
        if record is None or record.purpose != PURPOSE:
            raise GatewayError(
                400,
                f"{param}: no fine-tune file {file_id!r} (upload it with POST /v1/files, "
                f"purpose {PURPOSE!r})",
                param=param,
                code="invalid_file",
            )
        return record

    async def list_jobs(self, request: Request) -> JSONResponse:
        after, limit = _page(request, default_limit=20, max_limit=100)
        metadata = _metadata_filter(request)
        jobs, more = self.store.list_jobs(request.state.key.id, after, limit, metadata)
        return _list([self.job_object(job) for job in jobs], more)

    async def get_job(self, request: Request, job_id: str) -> JSONResponse:
        return JSONResponse(self.job_object(self._job(request, job_id)))

    async def cancel_job(self, request: Request, job_id: str) -> JSONResponse:
        job = self._job(request, job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            raise GatewayError(
                409,
                f"fine-tuning job {job_id} has already ended ({job.status})",
                param="fine_tuning_job_id",
                code="job_not_cancellable",
            )
        await self.runner.cancel(job)
        return JSONResponse(self.job_object(self._job(request, job_id)))

    async def pause_job(self, request: Request, job_id: str) -> JSONResponse:
        """Stop a running job at the end of its step with a checkpoint; `resume` continues it."""
        job = self._job(request, job_id)
        if job.status != "running":
            raise _not_now(job, "paused: only a running job can be")
        await self.runner.pause(job)
        return JSONResponse(self.job_object(self._job(request, job_id)))

    async def resume_job(self, request: Request, job_id: str) -> JSONResponse:
        job = self._job(request, job_id)
        if job.status != "paused" or not self.runner.resume(job):
            raise _not_now(job, "resumed: only a paused job can be")
        return JSONResponse(self.job_object(self._job(request, job_id)))

    async def list_events(self, request: Request, job_id: str) -> JSONResponse:
        job = self._job(request, job_id)
        after, limit = _page(request, default_limit=20, max_limit=1000)
        events = self._events(job)
        return _list(*_after(events, after, limit))

    async def list_checkpoints(self, request: Request, job_id: str) -> JSONResponse:
        job = self._job(request, job_id)
        after, limit = _page(request, default_limit=10, max_limit=100)
        found = reversed(checkpoints(read_progress(self.runner.run_dir(job.id))))
        objects = [
            {
                "id": f"ftckpt-{_short(job.id)}-{checkpoint.step}",
                "object": "fine_tuning.job.checkpoint",
                "created_at": int(checkpoint.time),
                "fine_tuning_job_id": job.id,
                # A registered version, served by the gateway under this name at once.
                "fine_tuned_model_checkpoint": checkpoint.model,
                "step_number": checkpoint.step,
                "metrics": checkpoint.metrics,
            }
            for checkpoint in found
            if checkpoint.model is not None  # its registration failed: not callable
        ]
        return _list(*_after(objects, after, limit))

    def _job(self, request: Request, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id, owner=request.state.key.id)
        if job is None:
            raise GatewayError(
                404,
                f"no fine-tuning job {job_id!r}",
                param="fine_tuning_job_id",
                code="fine_tuning_job_not_found",
            )
        return job

    # --- objects ------------------------------------------------------------------------------

    def job_object(self, job: JobRecord) -> dict[str, Any]:
        hyperparameters = job.request["hyperparameters"]
        method = job.request.get("method", "supervised")  # jobs stored before DPO have none
        return {
            "id": job.id,
            "object": "fine_tuning.job",
            "created_at": job.created_at,
            "finished_at": job.finished_at,
            "model": job.model,
            "fine_tuned_model": job.name if job.status == "succeeded" else None,
            "organization_id": job.owner,
            "status": job.status,
            "training_file": job.training_file,
            "validation_file": job.validation_file,
            "hyperparameters": hyperparameters,
            "method": {"type": method, method: {"hyperparameters": hyperparameters}},
            "seed": job.request["seed"],
            "user_provided_suffix": job.request["suffix"],
            "metadata": job.request["metadata"],
            "trained_tokens": job.trained_tokens,
            "result_files": self._result_files(job),
            "estimated_finish": self._estimated_finish(job),
            "error": job.error,
            "integrations": [self._mlflow(job)] if job.run_id else [],
        }

    def _result_files(self, job: JobRecord) -> list[str]:
        file_id = result_file_id(job.id)
        return [file_id] if self.store.get_file(file_id, job.owner) is not None else []

    def _estimated_finish(self, job: JobRecord) -> int | None:
        if job.status != "running":
            return None
        return estimated_finish(read_progress(self.runner.run_dir(job.id)))

    def _mlflow(self, job: JobRecord) -> dict[str, Any]:
        """The job's MLflow run (and, once registered, its model version) with UI links."""
        ui = self.tracking_uri.rstrip("/")
        links = ui.startswith(("http://", "https://"))
        run_url = model_url = None
        if links and job.experiment_id:
            run_url = f"{ui}/#/experiments/{job.experiment_id}/runs/{job.run_id}"
        if links and job.version is not None:
            model_url = f"{ui}/#/models/{job.name}/versions/{job.version}"
        return {
            "type": "mlflow",
            "mlflow": {
                "tracking_uri": self.tracking_uri,
                "experiment_id": job.experiment_id,
                "run_id": job.run_id,
                "run_url": run_url,
                "registered_model": job.name if job.version is not None else None,
                "registered_model_version": job.version,
                "registered_model_url": model_url,
            },
        }

    def _events(self, job: JobRecord) -> list[dict[str, Any]]:
        """The job's own events and its training's, newest first."""
        short = _short(job.id)
        events = [
            (event.created_at, f"ftevent-{short}-j{event.seq}", event.level, event.message,
             "message", event.data)
            for event in self.store.events(job.id)
        ]  # fmt: skip
        progress = read_progress(self.runner.run_dir(job.id))
        events += [
            (e.time, f"ftevent-{short}-t{e.index}", e.level, e.message, e.type, e.data)
            for e in training_events(progress)
        ]
        events.sort(key=lambda event: event[0], reverse=True)
        return [
            {
                "id": event_id,
                "object": "fine_tuning.job.event",
                "created_at": int(created),
                "level": level,
                "message": message,
                "type": kind,
                "data": data,
            }
            for created, event_id, level, message, kind, data in events
        ]


# --- helpers ----------------------------------------------------------------------------------


def file_object(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
        "gemlora": record.summary,  # examples, images, format, digest, warnings
    }


def _parse_create(body: bytes) -> CreateJobRequest:
    try:
        return CreateJobRequest.model_validate_json(body)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            message = f"request body is not valid JSON: {first['msg']}"
            raise GatewayError(400, message, code="invalid_json") from None
        raise validation_error(error) from None


@contextlib.asynccontextmanager
async def _multipart(request: Request):
    try:
        form = await request.form(max_files=1, max_fields=8)
    except HTTPException as error:  # starlette's answer to a malformed multipart body
        raise GatewayError(
            400,
            f"expected a multipart/form-data body with `file` and `purpose`: {error.detail}",
            code="invalid_multipart",
        ) from None
    try:
        yield form
    finally:
        await form.close()


def _page(request: Request, default_limit: int, max_limit: int) -> tuple[str | None, int]:
    """`after` (an object id) and `limit` from the query string."""
    text = request.query_params.get("limit")
    if text is None:
        return request.query_params.get("after"), default_limit
    if not text.isdigit() or not 1 <= int(text) <= max_limit:
        message = f"limit: must be an integer from 1 to {max_limit}"
        raise GatewayError(400, message, param="limit", code="invalid_value")
    return request.query_params.get("after"), int(text)


def _not_now(job: JobRecord, what: str) -> GatewayError:
    return GatewayError(
        409,
        f"fine-tuning job {job.id} is {job.status} and cannot be {what}",
        param="fine_tuning_job_id",
        code="invalid_job_status",
    )


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """OpenAI's filter: `metadata[KEY]=VALUE` (repeatable: all must match), or `metadata=null`
    for jobs without metadata."""
    query = request.query_params
    if query.get("metadata") == "null":
        return {}
    found = {}
    for name, value in query.multi_items():
        if name.startswith("metadata[") and name.endswith("]") and len(name) > len("metadata[]"):
            found[name[len("metadata[") : -1]] = value
        elif name.startswith("metadata"):
            raise GatewayError(
                400,
                f"unsupported filter {name!r}: use metadata[KEY]=VALUE or metadata=null",
                param=name,
                code="invalid_value",
            )
    return found or None


def _after(objects: list[dict], after: str | None, limit: int) -> tuple[list[dict], bool]:
    """The page of `objects` (newest first) that follows the object with id `after`."""
    start = 0
    if after is not None:
        ids = [item["id"] for item in objects]
        start = ids.index(after) + 1 if after in ids else len(objects)
    page = objects[start : start + limit]
    return page, start + limit < len(objects)


def _list(data: list[dict], has_more: bool) -> JSONResponse:
    return JSONResponse({"object": "list", "data": data, "has_more": has_more})


def _short(object_id: str) -> str:
    return object_id.rsplit("-", 1)[-1][:12]


# The kind of file (`ingest`'s summary) each method trains on, and what it is called.
FILE_KINDS = {"supervised": "chat", "dpo": "preference", "reinforcement": "prompt"}
KIND_WORDS = {"chat": "chat examples", "preference": "preference pairs", "prompt": "prompts"}


def _check_file_kinds(files: dict[str, FileRecord], method: str) -> None:
    """A DPO job trains on preference pairs, a supervised one on chats, a reinforcement one on
    prompts: every file given must hold what its method needs (one 400 lists each file that
    does not)."""
    needed = FILE_KINDS[method]
    wrong = [
        f"{param}: {record.id} ({record.filename}) holds {kind} examples"
        for param, record in files.items()
        if (kind := record.summary.get("kind", "chat")) != needed
    ]
    if wrong:
        what = KIND_WORDS[needed]
        raise GatewayError(
            400,
            f"a {method} job trains on {what}: " + "; ".join(wrong),
            param=wrong[0].split(":")[0],
            code="invalid_file",
        )


def _family(base: str) -> str | None:
    try:
        return resolve_base(base).family
    except LookupError:
        return None


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"file is over the limit of {limit:,} bytes (jobs.max_file_bytes)",
        param="file", code="file_too_large",
    )  # fmt: skip
