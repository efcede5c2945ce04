"""Run generated Python against stdin/stdout test cases in a separate, limited process.

Used by execution-verified eval tasks (forgeml.eval.tasks `code_exec`) and by the RL execution
reward (forgeml.train.rewards). Each run gets a fresh `python -I -S` in its own session, an
empty temp folder as cwd, rlimits on memory/CPU/file size, no network, and is killed (with
every process it started) on timeout. This is isolation, not a security boundary: for hostile
code add a container or VM around the whole job.

Start-up cost matters (RL scores thousands of runs): the child skips `site` (`-S`; its `.pth`
hooks, an editable install's finder among them, cost ~3x the rest of start-up) and gets this
interpreter's site-packages folders on its path instead, so installed packages still import;
and the rlimits are set by the launcher in the child before the program runs, not by a
`preexec_fn`, so the parent is spawned from with vfork rather than a copy of its page tables
(a training process holds gigabytes).
"""

from __future__ import annotations

import functools
import math
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

MAX_OUTPUT_BYTES = 1 << 20

Isolation = Literal["netns", "audit-hook"]

# Fallback when network namespaces are unavailable: an audit hook (PEP 578) installed before
# the program runs refuses every socket operation. It cannot be removed from Python code, but
# native code (ctypes, C extensions) can still reach the network: a weaker guarantee.
_NO_SOCKETS_HOOK = """
def _forgeml_no_network(event, args):
    if event.startswith("socket."):
        raise PermissionError("network access is disabled in the forgeml sandbox")
sys.addaudithook(_forgeml_no_network)
"""

# Runs first in the child: limits, then the network hook, then the program as a fresh
# `__main__` module (what `runpy.run_path` does, without the cost of importing runpy).
_LAUNCHER = """
import resource, sys
for _which, _value in {rlimits!r}:
    resource.setrlimit(_which, (_value, _value))
{hook}
sys.path.extend({paths!r})
sys.argv = [{program!r}]
_main = type(sys)("__main__")
_main.__file__ = {program!r}
sys.modules["__main__"] = _main
with open({program!r}, "rb") as _fh:
    _code = compile(_fh.read(), {program!r}, "exec")
del _fh, _which, _value
exec(_code, _main.__dict__)
"""


@functools.cache
def _site_paths() -> tuple[str, ...]:
    """This interpreter's site-packages folders, for a child started without `site`."""
    paths = sysconfig.get_paths()
    return tuple(dict.fromkeys(p for p in (paths["purelib"], paths["platlib"]) if p))


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run. `memory_mb` caps the address space (RLIMIT_AS), `file_mb`
    every file the program writes, stdout included (RLIMIT_FSIZE); CPU time is capped at the
    wall-clock timeout rounded up, as a backstop should the parent die."""

    timeout_s: float = 10.0
    memory_mb: int | None = 1024
    file_mb: int = 16
    network: bool = False
    isolation: Isolation | None = None  # None: netns when available, else audit-hook

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_mb is not None and self.memory_mb < 32:
            raise ValueError(
                f"memory_mb must be >= 32 (Python needs it to start), got {self.memory_mb}"
            )


@dataclass(frozen=True)
class CaseResult:
    passed: bool
    stdout: str
    error: str | None = None


@functools.cache
def network_namespace_available() -> bool:
    """True when `unshare -rn` can give a child its own empty network namespace (Linux with
    unprivileged user namespaces, or root)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def network_isolation(limits: SandboxLimits | None = None) -> Isolation | None:
    """How the sandbox cuts the network for `limits`: 'netns' (own network namespace, no
    interfaces up: nothing is reachable, not even loopback), 'audit-hook' (Python-level socket
    block), or None when `limits.network` allows it."""
    limits = limits or SandboxLimits()
    if limits.network:
        return None
    if limits.isolation is not None:
        return limits.isolation
    return "netns" if network_namespace_available() else "audit-hook"


def _rlimits(limits: SandboxLimits) -> list[tuple[int, int]]:
    """The (resource, value) pairs the launcher sets, soft and hard, before the program runs."""
    out = [] if limits.memory_mb is None else [(resource.RLIMIT_AS, limits.memory_mb << 20)]
    return out + [
        (resource.RLIMIT_FSIZE, limits.file_mb << 20),
        (resource.RLIMIT_CPU, math.ceil(limits.timeout_s) + 1),
        (resource.RLIMIT_CORE, 0),
    ]


def _wait(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """The child's exit status, or None when it is still running after `timeout_s`. Waits on a
    pidfd where Linux has them: `Popen.wait(timeout=)` polls with sleeps of up to 50 ms, which
    was most of the cost of a short run."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(math.ceil(timeout_s * 1000)):
            return None
        return proc.wait()
    finally:
        os.close(fd)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(
    source: str,
    stdin: str = "",
    *,
    timeout_s: float | None = None,
    limits: SandboxLimits | None = None,
) -> CaseResult:
    """Run `source` once in a fresh sandboxed interpreter; passed = exit status 0 in time.

    `timeout_s` overrides `limits.timeout_s`. On timeout the whole process group is killed
    (children the program started included).
    """
    limits = limits or SandboxLimits()
    if timeout_s is not None:
        limits = SandboxLimits(
            timeout_s=timeout_s, memory_mb=limits.memory_mb, file_mb=limits.file_mb,
            network=limits.network, isolation=limits.isolation,
        )  # fmt: skip
    isolation = network_isolation(limits)
    with tempfile.TemporaryDirectory(prefix="forgeml-sandbox-") as root:
        base = Path(root)
        cwd = base / "work"
        cwd.mkdir()
        program = base / "program.py"
        program.write_text(source)
        (base / "stdin").write_text(stdin)
        launcher = _LAUNCHER.format(
            rlimits=_rlimits(limits), hook=_NO_SOCKETS_HOOK if isolation == "audit-hook" else "",
            paths=list(_site_paths()), program=str(program),
        )  # fmt: skip
        cmd = [sys.executable, "-I", "-S", "-c", launcher]
        if isolation == "netns":
            cmd = [shutil.which("unshare") or "unshare", "-rn", *cmd]
        env = {"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin", "HOME": str(cwd), "TMPDIR": str(cwd)}
        with (
            open(base / "stdin") as fin,
            open(base / "stdout", "wb") as fout,
            open(base / "stderr", "wb") as ferr,
        ):
            proc = subprocess.Popen(
                cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=cwd, env=env,
                start_new_session=True,
            )  # fmt: skip
            try:
                returncode = _wait(proc, limits.timeout_s)
            finally:
                # Also reaps what the program left running in the background after exiting.
                _kill_group(proc)
                proc.wait()
        out = _read_capped(base / "stdout")
        err = _read_capped(base / "stderr")
    if returncode is None:
        return CaseResult(False, out, f"timed out after {limits.timeout_s:g}s (killed)")
    if returncode != 0:
        if returncode == -signal.SIGXFSZ:
            return CaseResult(False, out, f"output over the {limits.file_mb} MiB file-size limit")
        if returncode == -signal.SIGXCPU:
            return CaseResult(False, out, "CPU time limit exceeded")
        tail = err.strip().splitlines()[-1:] or [f"exit status {returncode}"]
        return CaseResult(False, out, tail[0][:500])
    return CaseResult(True, out)


def _read_capped(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.read(MAX_OUTPUT_BYTES).decode("utf-8", errors="replace")


def score_io_cases(
    source: str,
    cases: Sequence[dict[str, Any]],
    *,
    timeout_s: float | None = None,
    limits: SandboxLimits | None = None,
    stop_after_timeout: bool = False,
) -> tuple[float, list[CaseResult]]:
    """Fraction of cases `{"inputs": [...], "expected": [lines]}` whose stdout lines (inputs
    fed one per line on stdin) equal `expected`, and each case's result. One fresh sandboxed
    process per case, so no state leaks between cases. With `stop_after_timeout` the cases
    after one that timed out are failed without running (a program that hangs once would
    otherwise cost a full timeout per case: what RL rewards want)."""
    results = []
    passed = 0
    timed_out = False
    for case in cases:
        if stop_after_timeout and timed_out:
            results.append(CaseResult(False, "", "not run: an earlier case timed out"))
            continue
        stdin = "".join(f"{v}\n" for v in case.get("inputs", []))
        res = run_python(source, stdin, timeout_s=timeout_s, limits=limits)
        timed_out = (res.error or "").startswith("timed out")
        ok = res.passed and res.stdout.splitlines() == [str(x) for x in case["expected"]]
        passed += ok
        results.append(CaseResult(ok, res.stdout, res.error))
    return (passed / len(cases) if cases else 0.0), results
