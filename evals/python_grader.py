"""A python grader's `grade(sample, item)`, run in a child interpreter of its own.

The child is `sys.executable -I` (isolated: no user site, no PYTHON* variables) started fresh,
not forked, so it shares nothing of this process, with an environment of PATH only, in an
empty temporary folder. Before the user's source runs it caps its address space (RLIMIT_AS)
and replaces the socket constructors and name lookups with functions that raise. The wall
time is enforced from here: the child's whole process group is killed at the limit.

This keeps honest mistakes (a loop, a huge list, a stray HTTP call) from hurting the caller;
it is not a sandbox against hostile code (ctypes or os.system can get past it). OpenAI runs
graders in a container named by `image_tag`; gemlora has none, so serve only trusted graders.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

from pydantic import BaseModel, Field

from gemlora.evals.errors import GraderError


class PythonLimits(BaseModel):
    """What one run of a python grader may use."""

    timeout_s: float = Field(10.0, gt=0, description="Wall time for the whole child run.")
    memory_bytes: int = Field(1 << 30, gt=0, description="The child's address space (RLIMIT_AS).")


# The child: limits and network block first, then the user's source, then one JSON line on
# the real stdout (the user's prints go to stderr so they cannot forge the result).
_CHILD = r"""
import json, resource, socket, sys, traceback
import _socket

payload = json.loads(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_AS, (payload["memory_bytes"], payload["memory_bytes"]))

def _no_network(*args, **kwargs):
    raise PermissionError("network access is blocked in python graders")

for module in (socket, _socket):
    for name in ("socket", "create_connection", "getaddrinfo", "gethostbyname", "socketpair",
                 "fromfd", "create_server"):
        if hasattr(module, name):
            setattr(module, name, _no_network)

result_out, sys.stdout = sys.stdout, sys.stderr
try:
    scope = {"__name__": "grader"}
    exec(compile(payload["source"], "<grader>", "exec"), scope)
    if not callable(scope.get("grade")):
        raise NameError("the source defines no function grade(sample, item)")
    reply = {"score": scope["grade"](payload["sample"], payload["item"])}
except MemoryError:
    reply = {"error": "MemoryError", "memory": True}
except BaseException as error:
    lines = traceback.format_exception_only(type(error), error)
    reply = {"error": lines[-1].strip(), "traceback": traceback.format_exc()}
try:
    text = json.dumps(reply)
except (TypeError, ValueError):
    text = json.dumps({"not_a_number": repr(reply["score"])[:200]})
result_out.write("\n" + text + "\n")
result_out.flush()
"""


def run_python_grader(
    name: str, source: str, sample: dict[str, Any], item: dict[str, Any], limits: PythonLimits
) -> float:
    """The number `grade(sample, item)` returned, or a GraderError saying why there is none."""
    payload = json.dumps(
        {"source": source, "sample": sample, "item": item, "memory_bytes": limits.memory_bytes}
    )
    stdout, stderr, code = _run_child(name, payload, limits.timeout_s)
    reply = _reply(name, stdout, stderr, code)
    if "memory" in reply:
        raise GraderError(
            f"python grader {name!r} exceeded the memory limit of {_gib(limits.memory_bytes)}",
            "python_grader_runtime_error",
        )
    if "error" in reply:
        raise GraderError(
            f"python grader {name!r} raised {reply['error']}", "python_grader_runtime_error"
        )
    return _number(name, reply)


def _run_child(name: str, payload: str, timeout_s: float) -> tuple[str, str, int]:
    with tempfile.TemporaryDirectory(prefix="gemlora-grader-") as workdir:
        child = subprocess.Popen(
            [sys.executable, "-I", "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=workdir,
            env={"PATH": os.defpath},
            start_new_session=True,  # its own process group: the kill below reaches its children
        )
        try:
            stdout, stderr = child.communicate(payload, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            raise GraderError(
                f"python grader {name!r} exceeded {timeout_s:g} s", "python_grader_runtime_error"
            ) from None
    return stdout, stderr, child.returncode


def _reply(name: str, stdout: str, stderr: str, code: int) -> dict[str, Any]:
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise GraderError(
            f"python grader {name!r} died (exit code {code}): {last}", "python_grader_server_error"
        ) from None


def _number(name: str, reply: dict[str, Any]) -> float:
    score = reply.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        shown = reply.get("not_a_number", repr(score))
        raise GraderError(
            f"python grader {name!r}: grade() returned {shown}, not a finite number",
            "python_grader_runtime_error",
        )
    return float(score)


def _gib(size: int) -> str:
    return f"{size / (1 << 30):g} GiB"
