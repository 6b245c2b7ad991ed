"""Promotion fails closed, on the session's real MLflow server: by default (`passed`) only a
version whose engine check passed is promoted; an unverified one (no engine reachable), one
whose check broke (`error`) or a failed one is not, and `not_failed` is an explicit opt-in that
still refuses an error. A check that breaks inside the verifier (during a training run, or
`gemlora adapters verify`) is recorded on the version as `error` with its reason, never left
unverified, and the run's progress says so.

The engine that breaks the check is a stub HTTP server: it lists the base in /v1/models like
a vLLM engine and answers completions with a page that is not JSON (a proxy's error page, say),
which a real engine cannot be made to do on purpose."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from gemlora.adapters import AdapterMetadata
from gemlora.adapters.verification_record import (
    VERIFY_TAG,
    ErroredVerification,
    Verification,
    error_record,
    record_of,
    state_of,
)
from gemlora.rundir import ProgressLog

BASE = "gemma-3-270m"


def metadata(eval_loss: float = 0.5) -> AdapterMetadata:
    return AdapterMetadata(base=BASE, eval_scores={"eval_loss": eval_loss})


def passed_tag() -> str:
    return Verification(
        passed=True,
        agreement=1.0,
        compared_by="logprobs",
        tolerance=0.1,
        max_logprob_gap=0.0,
        prompts=4,
        engine_base=BASE,
        checked_at=datetime.now(UTC),
    ).to_tag()


def test_by_default_only_a_version_whose_check_passed_is_promoted(registry, adapters, name):
    registry.register(adapters.a, name, metadata())
    promote = registry.promote_if_better

    # Never verified (no engine was reachable): not promoted by default; opted in, it is.
    assert not promote(name, 1, "eval_loss", higher_is_better=False)
    assert "champion" not in registry.show(name).aliases

    # The check broke: not promoted, not even under `not_failed`.
    registry.set_version_tag(name, 1, VERIFY_TAG, error_record("RuntimeError: boom").to_tag())
    for rule in ("passed", "not_failed"):
        assert not promote(name, 1, "eval_loss", higher_is_better=False, verification=rule)
    assert "champion" not in registry.show(name).aliases

    registry.set_version_tag(name, 1, VERIFY_TAG, passed_tag())
    assert promote(name, 1, "eval_loss", higher_is_better=False)
    assert registry.show(name).aliases["champion"] == 1

    registry.register(adapters.b, name, metadata(eval_loss=0.1))
    assert not promote(name, 2, "eval_loss", higher_is_better=False)  # better, but unverified
    assert promote(name, 2, "eval_loss", higher_is_better=False, verification="not_failed")
    assert registry.show(name).aliases["champion"] == 2


class _BrokenEngine(BaseHTTPRequestHandler):
    """Lists the base as a vLLM engine does; answers every completion with a non-JSON page."""

    def do_GET(self) -> None:
        self._answer("application/json", json.dumps({"data": [{"id": BASE, "parent": None}]}))

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer("text/html", "<html>upstream went away</html>")

    def _answer(self, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def broken_engine() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BrokenEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_a_check_that_breaks_during_a_run_is_recorded_as_error_and_not_promoted(
    registry, adapters, name, broken_engine, tmp_path
):
    from gemlora.train.config import parse_config
    from gemlora.train.run import _promote, _verify

    version = registry.register(adapters.a, name, metadata())
    document = {
        "base": {"model": BASE},
        "data": {"train_file": "train.jsonl"},
        "output": {
            "name": name,
            "tracking_uri": registry.config.tracking_uri,
            "verify": {"engine_url": broken_engine, "tokens": 2},
            "promote_if": {"metric": "eval_loss", "higher_is_better": False},
        },
    }
    progress = ProgressLog(tmp_path / "progress.jsonl")
    text_only = SimpleNamespace(eval=[])  # the run's held-out data: no images on a text base

    assert _verify(parse_config(document), registry, version, text_only, progress) is None

    tags = registry.lookup(f"{name}/{version}").tags
    recorded = record_of(tags)
    assert state_of(tags) == "error" and isinstance(recorded, ErroredVerification), tags
    assert recorded.error.startswith("JSONDecodeError: "), recorded.error
    events = progress.read(strict=True)
    assert [event.event for event in events] == ["verification_error"]
    assert (events[0].version, events[0].recorded) == (version, True)
    assert events[0].reason == recorded.error
    level, message, _ = events[0].describe()
    assert level == "error" and f"Verification of version {version} broke" in message

    assert _promote(parse_config(document), registry, version, None, None) is False
    document["output"]["promote_if"]["verification"] = "not_failed"
    assert _promote(parse_config(document), registry, version, None, None) is False
    assert "champion" not in registry.show(name).aliases


def test_the_verify_command_records_a_check_that_breaks(registry, adapters, name, broken_engine):
    from gemlora.cli import app

    version = registry.register(adapters.a, name, metadata())
    options = ["--tracking-uri", registry.config.tracking_uri]
    command = ["verify", f"{name}/{version}", "--engine-url", broken_engine, "--base", BASE]
    result = CliRunner().invoke(app, ["adapters", *options, *command, "--tokens", "2"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "error: the check broke: JSONDecodeError: " in result.stderr
    assert state_of(registry.lookup(f"{name}/{version}").tags) == "error"
    shown = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["adapters", *options, "show", name])
    assert "error (JSONDecodeError: " in shown.output, shown.output
