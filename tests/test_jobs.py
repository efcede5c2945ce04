"""Job queue and workers: each job runs exactly once, cancel, kill a worker and retry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from forgeml.control.job_spec import JobSpec, parse_job_args
from forgeml.control.jobs import (
    CANCELLED,
    RETRYABLE,
    SUCCEEDED,
    cancel_job,
    claim_next_job,
    finish_job,
    get_job,
    list_jobs,
    reap_stale_jobs,
    retry_delay_s,
    retry_job,
    submit_job,
)
from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.registry import open_registry


def _worker(ws, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "forgeml.cli", "-q", "-w", str(ws.root), "worker", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _ingest(folder: Path, name: str = "docs") -> JobSpec:
    """A cheap job: ingest one small folder (made here)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.txt").write_text(f"notes of {name}\n")
    return parse_job_args(["data", "ingest", str(folder), "--name", name])


QUEUED_ONLY = parse_job_args(["data", "ingest", "never-run"])


def test_queue_state_machine(workspace) -> None:
    reg = open_registry(workspace)
    a = submit_job(reg, QUEUED_ONLY)
    b = submit_job(reg, QUEUED_ONLY)
    assert a.args == ["data", "ingest", "never-run"] and a.spec["command"] == "data ingest"
    assert cancel_job(reg, b.id).status == CANCELLED
    claimed = claim_next_job(reg, "w1")
    assert claimed.id == a.id and claimed.attempts == 1
    assert claim_next_job(reg, "w2") is None  # b was cancelled, a is taken
    with pytest.raises(ForgeError):
        finish_job(reg, a.id, "w2", exit_code=0)  # not w2's job
    assert finish_job(reg, a.id, "w1", exit_code=1).status == RETRYABLE
    assert retry_job(reg, a.id).status == "queued"
    with pytest.raises(ForgeError, match="JobSpec"):
        submit_job(reg, ["data", "ingest", "x"])  # a command line is read by the planner
    unplanned = parse_job_args(["pipeline", "run", "r.yaml"])
    with pytest.raises(ForgeError, match="plan it first"):
        submit_job(reg, unplanned)  # its recipe was never validated


def test_stale_running_job_is_reaped(workspace) -> None:
    reg = open_registry(workspace)
    job = submit_job(reg, QUEUED_ONLY)
    claim_next_job(reg, "ghost")
    assert reap_stale_jobs(reg, timeout_s=3600) == []
    time.sleep(0.05)
    assert reap_stale_jobs(reg, timeout_s=0.01) == [job.id]
    assert get_job(reg, job.id).status == RETRYABLE


def test_retryable_job_is_claimed_again_after_an_exponential_backoff(workspace) -> None:
    """A job whose worker died is run again without a human, once its backoff passed, until
    its attempts are spent."""
    reg = open_registry(workspace)
    job = submit_job(reg, QUEUED_ONLY, max_attempts=3)
    claim_next_job(reg, "ghost")
    time.sleep(0.05)
    reap_stale_jobs(reg, timeout_s=0.01)
    waiting = get_job(reg, job.id)
    assert waiting.status == RETRYABLE and not waiting.done  # a worker will run it again
    assert waiting.retry_at(10.0) == waiting.ended_at + timedelta(seconds=10)
    assert retry_delay_s(1, 10.0) == 10 and retry_delay_s(2, 10.0) == 20
    assert claim_next_job(reg, "w", retry_base_s=3600) is None  # still backing off
    time.sleep(0.01)
    second = claim_next_job(reg, "w", retry_base_s=1e-3)
    assert second is not None and second.id == job.id and second.attempts == 2
    failed = finish_job(reg, job.id, "w", exit_code=1)
    assert failed.status == RETRYABLE
    assert failed.retry_at(10.0) == failed.ended_at + timedelta(seconds=20)  # doubled
    assert claim_next_job(reg, "w", retry_base_s=3600) is None
    time.sleep(0.01)
    third = claim_next_job(reg, "w", retry_base_s=1e-3)
    assert third is not None and third.attempts == 3
    last = finish_job(reg, job.id, "w", exit_code=1)
    assert last.status == "failed" and last.retry_at() is None and last.done  # 3 of 3
    time.sleep(0.01)
    assert claim_next_job(reg, "w", retry_base_s=1e-3) is None
    # Cancelling a job that waits for its retry stops it from being retried.
    other = submit_job(reg, QUEUED_ONLY)
    claim_next_job(reg, "w")
    finish_job(reg, other.id, "w", exit_code=1)
    assert cancel_job(reg, other.id).status == CANCELLED
    time.sleep(0.01)
    assert claim_next_job(reg, "w", retry_base_s=1e-3) is None
    # A failure that would repeat itself is not retried.
    doomed = submit_job(reg, QUEUED_ONLY)
    claim_next_job(reg, "w")
    ended = finish_job(reg, doomed.id, "w", exit_code=None, error="bad", retryable=False)
    assert ended.status == "failed" and ended.attempts == 1 and ended.done


def test_worker_retries_a_failed_job_by_itself(workspace, tmp_path) -> None:
    reg = open_registry(workspace)
    job = submit_job(reg, _ingest(tmp_path / "docs"))
    claim_next_job(reg, "ghost")
    time.sleep(0.05)
    reap_stale_jobs(reg, timeout_s=0.01)
    out = subprocess.run(
        [sys.executable, "-m", "forgeml.cli", "-q", "-w", str(workspace.root), "worker",
         "--max-jobs", "1", "--retry-backoff", "0.1", "--poll", "0.1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    done = get_job(reg, job.id)
    assert done.status == SUCCEEDED and done.attempts == 2


@pytest.mark.parametrize("wildcard", ["%", "_", "job-%", "j_b"])
def test_job_lookup_treats_like_wildcards_as_characters(workspace, wildcard: str) -> None:
    reg = open_registry(workspace)
    job = submit_job(reg, QUEUED_ONLY)
    with pytest.raises(NotFoundError):
        get_job(reg, wildcard)
    with pytest.raises(NotFoundError):
        get_job(reg, "")
    assert get_job(reg, job.id[:8]).id == job.id


def test_concurrent_workers_run_each_job_exactly_once(workspace, tmp_path) -> None:
    reg = open_registry(workspace)
    ids = [submit_job(reg, _ingest(tmp_path / f"d{i}", f"d{i}")).id for i in range(4)]
    workers = [_worker(workspace, "--idle-exit", "3", "--poll", "0.2") for _ in range(3)]
    outs = [w.communicate(timeout=240)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outs
    jobs = {j.id: j for j in list_jobs(reg)}
    assert all(jobs[i].status == SUCCEEDED and jobs[i].attempts == 1 for i in ids), outs
    ran = sum(int(o.split("worker ran ")[1].split()[0]) for o in outs)
    assert ran == len(ids)  # none run twice, none lost
    assert len({jobs[i].worker for i in ids}) >= 2
    assert {a.name for a in reg.list_assets("dataset")} == {f"d{i}" for i in range(4)}


@pytest.mark.slow
def test_killed_worker_job_is_retried_and_resumes(workspace, tmp_path: Path) -> None:
    """SIGKILL a worker mid-training: the job becomes failed-retryable, the next worker retries
    it by itself, and the retry resumes the pre-training from the last checkpoint."""
    from acme import generate_corpus

    corpus = tmp_path / "acme"
    generate_corpus(corpus, seed=3, scale=0.05)
    reg = open_registry(workspace)
    args = [
        "pipeline",
        "run",
        str(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"),
        f"data.sources=[{corpus}]",
        "tokenizer.vocab_size=400",
        "model.dim=64",
        "model.n_heads=4",
        "model.n_layers=2",
        "model.ffn_hidden=128",
        "train.max_steps=300",
        "train.seq_len=64",
        "train.micro_batch_size=4",
        "train.checkpoint_every=10",
        "train.eval_every=0",
        "train.dtype=fp32",
        "eval.max_batches=2",
        "generate.prompts=[]",
        "data.curate=false",
        "sft=null",
        "posttrain=null",
        "--auto-resume",
    ]
    job = submit_job(reg, parse_job_args(args).resolved()[0], args=args)
    worker = _worker(workspace, "--heartbeat", "0.5", "--max-jobs", "1")
    deadline = time.monotonic() + 180
    ckpts: list[Path] = []
    while time.monotonic() < deadline and not ckpts:
        ckpts = list(workspace.runs_dir.glob("pretrain/*/checkpoints/step_*"))
        time.sleep(0.3)
    assert ckpts, "no checkpoint appeared"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(1.0)
    assert reap_stale_jobs(reg, timeout_s=0.5) == [job.id]
    assert get_job(reg, job.id).status == RETRYABLE
    second = _worker(workspace, "--max-jobs", "1", "--retry-backoff", "0.5")  # no `jobs retry`
    second.communicate(timeout=400)
    final = get_job(reg, job.id)
    assert final.status == SUCCEEDED and final.attempts == 2
    log = (workspace.runs_dir / "jobs" / job.id / "attempt-2.log").read_text()
    assert "ingest: cached" in log and "pack: cached" in log
    runs = [r for r in reg.list_runs(stage="pretrain")]
    assert len(runs) == 2  # the killed attempt and the one that resumed it
    dirs = {p.parent.parent for p in workspace.runs_dir.glob("pretrain/*/checkpoints/step_*")}
    assert len(dirs) == 1  # the retry continued in the interrupted run's folder
