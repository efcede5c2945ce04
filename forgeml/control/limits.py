"""Bounds on what one control-plane request may ask for, checked before any work is done.

A job's arguments and the paths a caller names are validated here (REST, MCP and the CLI
share these checks; a job's options are typed in job_spec), so a malformed or oversized request
is a clear 4xx instead of an exception deep in the planner. `SHUTDOWN` is set when the server
is asked to stop; long planning loops call `check_running` so in-flight work ends promptly.
"""

from __future__ import annotations

import threading

from forgeml.core.errors import ForgeError

MAX_JOB_ARGS = 256  # words of one job's command line
MAX_ARG_CHARS = 4096  # characters of one word (PATH_MAX on Linux)
MAX_ARGS_TOTAL_CHARS = 64 * 1024
MAX_PATH_CHARS = 4096
MAX_NAME_CHARS = 255  # one path component (NAME_MAX)
MAX_BODY_BYTES = 1024 * 1024  # a control-plane request body

SHUTDOWN = threading.Event()


class InvalidRequest(ForgeError):
    """A request the control plane refuses as malformed (HTTP 422)."""


class RequestTooLarge(InvalidRequest):
    """A request over one of the size bounds (HTTP 413)."""


class ShuttingDown(ForgeError):
    """The server is stopping; the request was abandoned (HTTP 503)."""


def check_running() -> None:
    """Raise ShuttingDown once the server was asked to stop (called inside long loops)."""
    if SHUTDOWN.is_set():
        raise ShuttingDown("the control plane is shutting down", hint="retry in a moment")


def check_text(text: str, what: str) -> None:
    """A string the control plane will store, print and hash: valid UTF-8, no NUL byte."""
    if "\0" in text:
        raise InvalidRequest(f"{what} contains a NUL byte", hint="remove the \\0 character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{what} is not valid Unicode (a lone surrogate at character {exc.start})",
            hint="send UTF-8 text; surrogates must come in pairs",
        ) from None


def check_job_args(args: list[str]) -> None:
    """The words of a job's command line are few, short and clean text."""
    if len(args) > MAX_JOB_ARGS:
        raise RequestTooLarge(
            f"a job's command has {len(args):,} arguments; at most {MAX_JOB_ARGS} are accepted",
            hint="put long lists (sources, overrides) in a recipe YAML and pass its path",
        )
    total = 0
    for i, arg in enumerate(args):
        if len(arg) > MAX_ARG_CHARS:
            raise RequestTooLarge(
                f"argument {i} is {len(arg):,} characters; at most {MAX_ARG_CHARS:,} are accepted",
                hint="put long values in a file and pass its path",
            )
        check_text(arg, f"argument {i}")
        total += len(arg)
    if total > MAX_ARGS_TOTAL_CHARS:
        raise RequestTooLarge(
            f"a job's command is {total:,} characters; at most {MAX_ARGS_TOTAL_CHARS:,}",
            hint="put long values in a recipe YAML and pass its path",
        )


def check_path_text(text: str, what: str) -> None:
    """A path a caller names: non-empty, clean text, within the OS limits on its length."""
    if not text:
        raise InvalidRequest(f"{what} is empty", hint="give a folder path")
    check_text(text, what)
    if len(text) > MAX_PATH_CHARS or any(len(p) > MAX_NAME_CHARS for p in text.split("/")):
        raise InvalidRequest(
            f"{what} is too long ({len(text):,} characters; at most {MAX_PATH_CHARS:,}, "
            f"{MAX_NAME_CHARS} per folder or file name)",
            hint="choose a shorter path",
        )
