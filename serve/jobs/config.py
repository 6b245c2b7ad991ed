"""The `jobs:` settings of a gateway that runs fine-tuning jobs, e.g. in a serve config:

    jobs:
      dir: ~/.cache/gemlora/jobs     # the store: jobs.db, uploaded files, one directory per job
      max_concurrent: 1              # training workers at once

An absent `jobs:` section leaves the Files and Fine-tuning Jobs endpoints off.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gemlora.paths import gemlora_home

MB = 1_000_000


class JobsConfig(BaseModel):
    """Files and fine-tuning jobs: where they are stored and how the workers run."""

    model_config = ConfigDict(extra="forbid")

    dir: Path | None = Field(
        default=None,
        description="The store (SQLite database, files, job directories); default "
        "$GEMLORA_HOME/jobs. One gateway per store: a second one refuses to start.",
    )
    max_concurrent: int = Field(
        default=1,
        ge=1,
        description="Training workers running at once; the rest wait queued. 1 suits a CPU "
        "machine or one GPU.",
    )
    max_file_bytes: int = Field(
        default=512 * MB, ge=1024, description="Largest upload accepted by POST /v1/files."
    )
    resume_interrupted: bool = Field(
        default=True,
        description="A job the gateway's restart interrupted resumes from its last checkpoint; "
        "false: it is marked failed with the reason.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Worker starts per job (the first run and its resumes); a worker killed "
        "mid-run is retried from its checkpoint while attempts remain.",
    )
    stop_timeout_s: float = Field(
        default=60,
        gt=0,
        description="How long a worker may take to stop after SIGTERM (cancel, shutdown) "
        "before it is killed.",
    )
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="How often running workers are checked."
    )

    def store_dir(self) -> Path:
        return (self.dir or gemlora_home() / "jobs").expanduser()
