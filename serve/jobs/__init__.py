"""Fine-tuning from the API: the gateway's OpenAI-compatible Files and Fine-tuning Jobs
endpoints, with MLflow behind them.

    client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="gemma-3-270m-w4a16", training_file=file.id)
    client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model   # callable once it succeeded

Uploads are validated with `data/` and stored with their images inline; each job becomes a
training config that a worker process runs (`gemlora train`, one MLflow run, the adapter
registered under the job's `fine_tuned_model` name). A SQLite store keeps files, jobs and
events across gateway restarts. Enabled by `GatewaySettings(jobs=JobsConfig(...))`.
"""

from gemlora.serve.jobs.api import JobsApi, JobsContext, mount_jobs
from gemlora.serve.jobs.config import JobsConfig
from gemlora.serve.jobs.runner import JobRunner, StoreInUse
from gemlora.serve.jobs.store import FileRecord, JobRecord, JobStore

__all__ = [
    "FileRecord",
    "JobRecord",
    "JobRunner",
    "JobStore",
    "JobsApi",
    "JobsConfig",
    "JobsContext",
    "StoreInUse",
    "mount_jobs",
]
