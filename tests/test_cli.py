"""The CLI: help everywhere, and errors a user can cause give one clear line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = [
    [],
    ["init"],
    ["data"],
    ["data", "ingest"],
    ["tokenizer", "train"],
    ["train", "pretrain"],
    ["generate"],
    ["eval", "run"],
    ["assets", "list"],
    ["assets", "show"],
    ["assets", "lineage"],
    ["assets", "delete"],
    ["approvals", "approve"],
    ["pipeline", "run"],
    ["eval", "gate"],
    ["eval", "report"],
    ["drift"],
    ["drift", "report"],
    ["serve"],
    ["keys", "create"],
    ["keys", "list"],
    ["audit", "verify"],
    ["data", "curate"],
    ["data", "show"],
    ["data", "diff"],
    ["jobs", "submit"],
    ["worker"],
    ["import", "hf"],
    ["export"],
    ["runs", "list"],
    ["runs", "show"],
    ["promote"],
    ["rollback"],
]


def forgeml(*args: str, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "forgeml.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help(cmd: list[str]) -> None:
    res = forgeml(*cmd, "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout
    assert len(res.stdout.splitlines()) > 3


def _assert_one_line_error(res, *needles: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr


def test_no_workspace_error(tmp_path: Path) -> None:
    res = forgeml("-w", str(tmp_path / "nowhere"), "assets", "list")
    _assert_one_line_error(res, "no forgeml workspace", "forgeml init")


def test_init_and_empty_listing(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    res = forgeml("init", str(ws))
    assert res.returncode == 0, res.stderr
    assert (ws / "forge.yaml").is_file() and (ws / "registry.db").is_file()
    res = forgeml("-w", str(ws), "assets", "list")
    assert res.returncode == 0, res.stderr


def test_unknown_asset(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    forgeml("init", str(ws))
    res = forgeml("-w", str(ws), "assets", "show", "model-doesnotexist")
    _assert_one_line_error(res, "model-doesnotexist", "assets list")


def test_invalid_recipe_key(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    forgeml("init", str(ws))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  max_step: 5\n")
    res = forgeml("-w", str(ws), "pipeline", "run", str(recipe))
    _assert_one_line_error(res, "train.max_step", "did you mean 'train.max_steps'")


def test_missing_recipe(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    forgeml("init", str(ws))
    res = forgeml("-w", str(ws), "pipeline", "run", str(tmp_path / "missing.yaml"))
    _assert_one_line_error(res, "recipe not found")


def test_ingest_empty_folder_and_missing_path(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    forgeml("init", str(ws))
    empty = tmp_path / "empty"
    empty.mkdir()
    res = forgeml("-w", str(ws), "data", "ingest", str(empty))
    _assert_one_line_error(res, str(empty))
    res = forgeml("-w", str(ws), "data", "ingest", str(tmp_path / "missing"))
    _assert_one_line_error(res, "missing")


def test_ingest_reports_binary_and_non_utf8(tmp_path: Path, text_folder: Path) -> None:
    ws = tmp_path / "ws"
    forgeml("init", str(ws))
    res = forgeml("-w", str(ws), "-q", "data", "ingest", str(text_folder), "--name", "docs")
    assert res.returncode == 0, res.stderr
    assert "51 kept, 1 skipped, 0 failed of 52 files" in res.stdout  # latin-1 is decoded
    again = forgeml("-w", str(ws), "-q", "data", "ingest", str(text_folder), "--name", "docs")
    assert "(cached)" in again.stdout


def test_drift_report_on_a_malformed_log_is_one_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text('{"event": "server_started"}\n{"event": "request", "prompt": {"x": 1}}\n')
    res = forgeml("drift", "report", "--log", str(log))
    _assert_one_line_error(res, "audit.jsonl:2", "text 'prompt'")


def test_debug_shows_traceback(tmp_path: Path) -> None:
    res = forgeml("--debug", "-w", str(tmp_path / "nowhere"), "assets", "list")
    assert res.returncode != 0
    assert "Traceback" in res.stderr


def test_keys_and_audit_through_the_cli(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    forgeml("init", str(ws))
    made = forgeml("-w", str(ws), "keys", "create", "--principal", "alice", "--rpm", "5")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    listed = forgeml("-w", str(ws), "keys", "list")
    assert "alice" in listed.stdout and key not in listed.stdout  # the secret is never listed
    assert forgeml("-w", str(ws), "audit", "verify").returncode == 0
    log = ws / "audit" / "audit.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0].replace("alice", "mallory"), *lines[1:]]) + "\n")
    res = forgeml("-w", str(ws), "audit", "verify")
    assert res.returncode == 1 and "broken at entry 0" in res.stderr


def test_curate_show_and_diff_through_the_cli(tmp_path: Path, text_folder: Path) -> None:
    ws = tmp_path / "ws"
    forgeml("init", str(ws))
    forgeml("-w", str(ws), "-q", "data", "ingest", str(text_folder), "--name", "docs")
    res = forgeml(
        "-w", str(ws), "-q", "data", "curate", "docs", "--name", "docs-clean",
        "--set", "curate.gopher_quality.enabled=false",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "report.html" in res.stdout
    show = forgeml("-w", str(ws), "data", "show", "docs-clean", "--json")
    assert show.returncode == 0, show.stderr
    diff = forgeml("-w", str(ws), "data", "diff", "docs", "docs-clean", "--json")
    assert diff.returncode == 0, diff.stderr
