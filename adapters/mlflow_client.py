"""The MLflow client as the registry uses it: quiet, loopback-friendly, and raising gemlora's
error types instead of MlflowException."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from gemlora.adapters.errors import AdapterError, AdapterNotFoundError, RegistryUnavailableError

_UNAVAILABLE_CODES = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")


def quiet_mlflow_env() -> None:
    """Before mlflow is imported: no usage telemetry leaves the machine, and downloads and
    registrations print nothing to stdout (the CLI's `resolve` prints a path scripts read)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def make_client(tracking_uri: str):
    quiet_mlflow_env()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def download(artifact_uri: str, destination: str, tracking_uri: str) -> None:
    """Download the artifact directory `artifact_uri` into `destination`. Goes through the
    artifact repository directly: `models:/` URIs fall back to the process-global registry."""
    quiet_mlflow_env()
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    repository.download_artifacts("", dst_path=destination)


def error_code(error: BaseException) -> str | None:
    return getattr(error, "error_code", None)


@contextlib.contextmanager
def mlflow_errors(tracking_uri: str) -> Iterator[None]:
    """Turn MLflow and HTTP failures into `AdapterError` subclasses."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        raise translate(error, tracking_uri) from error
    except requests.RequestException as error:
        raise _unavailable(tracking_uri, error) from error


def translate(error: Exception, tracking_uri: str) -> AdapterError:
    code = error_code(error)
    message = getattr(error, "message", str(error))
    if code == "RESOURCE_DOES_NOT_EXIST":
        return AdapterNotFoundError(message)
    if code in _UNAVAILABLE_CODES or "API request to" in message:
        return _unavailable(tracking_uri, message)
    return AdapterError(f"the MLflow registry refused the request: {message}")


def _unavailable(tracking_uri: str, detail: object) -> RegistryUnavailableError:
    return RegistryUnavailableError(
        f"cannot use the MLflow registry at {tracking_uri} ({detail}); is the server running? "
        "Set --tracking-uri or MLFLOW_TRACKING_URI to another one."
    )


def all_pages(search: Callable[..., Any]) -> list:
    """Every result of a paginated MLflow search, `search(page_token=...)` per page."""
    results, token = [], None
    while True:
        page = search(page_token=token)
        results.extend(page)
        token = page.token
        if not token:
            return results
