"""Teacher-generated data through any OpenAI-compatible endpoint, self-instruct style (Wang et
al., "Self-Instruct", arXiv:2212.10560): the teacher proposes new instructions from sampled
seed (and earlier generated) tasks, then answers each; the pairs are deduplicated against the
training set and among themselves (MinHash) and filtered by a reward function.

Deviation from the paper: dedup and filtering run once over the batch (not per round), and
near duplicates are found by MinHash Jaccard instead of ROUGE-L. Every request sent to the
teacher is stored next to the dataset (`requests.jsonl`); the API key never is.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

from forgeml.core.errors import ConfigError, DataError, ForgeError, NotFoundError
from forgeml.core.io import atomic_write_text
from forgeml.core.seeds import derive_seed
from forgeml.core.workspace import Workspace
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry
from forgeml.synth.records import (
    CHAT_FORMAT,
    SynthRecord,
    filter_by_reward,
    filter_duplicates,
    write_synth_dataset,
)

PROPOSE = (
    "Come up with a new task, different from the examples. Write only the task instruction "
    "on one line.\n\n{examples}\nTask {n}:"
)


def load_seed_tasks(path: str | Path) -> list[str]:
    """Seed instructions: a JSONL file of {"instruction": ...} objects (self-instruct's seed
    format) or a text file with one instruction per line."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"seed tasks not found: {path}", hint="pass --seeds FILE")
    tasks = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if path.suffix == ".jsonl":
            try:
                task = json.loads(line)["instruction"]
            except (ValueError, KeyError, TypeError):
                raise DataError(
                    f"{path}:{number}: expected a JSON object with an 'instruction'"
                ) from None
            tasks.append(str(task).strip())
        else:
            tasks.append(line)
    if not tasks:
        raise DataError(f"{path} has no seed tasks", hint="one instruction per line")
    return tasks


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line.lower().startswith("task") and ":" in line[:12]:
            line = line.split(":", 1)[1].strip()
        if line:
            return line
    return ""


def self_instruct(
    client: Any,
    model: str,
    seeds: list[str],
    *,
    n: int,
    examples_per_prompt: int = 4,
    temperature: float = 0.7,
    max_tokens: int = 128,
    min_words: int = 3,
    max_words: int = 150,
    seed: int = 0,
    log: list[dict[str, Any]] | None = None,
) -> list[SynthRecord]:
    """`n` instruction/response records from the teacher (an `openai.OpenAI` client); failed
    or unusable generations are kept as filtered records with their reason."""
    import openai

    rng = random.Random(seed)
    pool = list(seeds)
    records = []

    def ask(kind: str, i: int, content: str) -> str:
        params = {"model": model, "temperature": temperature, "max_tokens": max_tokens,
                  "seed": derive_seed(seed, "synth.teacher_request", 2 * i + (kind == "answer"))}  # fmt: skip
        messages = [{"role": "user", "content": content}]
        reply = client.chat.completions.create(messages=messages, **params)
        text = reply.choices[0].message.content or ""
        if log is not None:
            log.append({"kind": kind, "index": i, "messages": messages, **params, "reply": text})
        return text

    for i in range(n):
        shown = rng.sample(pool, min(examples_per_prompt, len(pool)))
        examples = "\n".join(f"Task {k + 1}: {t}" for k, t in enumerate(shown))
        rid = hashlib.sha256(f"{model}\0{seed}\0{i}".encode()).hexdigest()[:16]
        rec = SynthRecord(rid, "self-instruct", "", "", {"examples": shown, "index": i})
        records.append(rec)
        try:
            rec.prompt = _first_line(
                ask("propose", i, PROPOSE.format(examples=examples, n=len(shown) + 1))
            )
            words = len(rec.prompt.split())
            if not rec.prompt:
                rec.filter("empty-instruction")
                continue
            if not min_words <= words <= max_words:
                rec.filter("instruction-length")
                continue
            pool.append(rec.prompt)
            rec.completion = ask("answer", i, rec.prompt).strip()
            if not rec.completion:
                rec.filter("empty-response")
        except (openai.AuthenticationError, openai.PermissionDeniedError,
                openai.NotFoundError) as exc:  # fmt: skip
            # the endpoint, key or model is wrong: no request would succeed
            raise ForgeError(
                f"the teacher endpoint refused the request ({type(exc).__name__}: "
                f"{getattr(exc, 'message', exc)})",
                hint="check --endpoint, --model and the API key in --api-key-env",
            ) from None
        except openai.APIError as exc:  # transient (rate limit, timeout, 5xx): this record only
            rec.filter(f"teacher-error: {type(exc).__name__}")
    return records


def _reward_scorer(path: str):
    from forgeml.core.plugins import load_plugin
    from forgeml.train.rewards import per_sample

    fn = load_plugin(path)
    if not callable(fn):
        raise ConfigError(f"reward '{path}' is not callable", hint="pass 'pkg.module:function'")
    return per_sample(path, fn)


def _training_texts(reg, ref: str) -> list[str]:
    import pyarrow.parquet as pq

    asset = reg.get_asset(ref)
    folder = Path(asset.path)
    if (folder / "data.parquet").is_file():
        return pq.read_table(folder / "data.parquet", columns=["text"]).column(0).to_pylist()
    texts = []
    for name in ("train.jsonl", "heldout.jsonl"):
        if (folder / name).is_file():
            for line in (folder / name).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    msgs = json.loads(line).get("messages") or []
                    texts.append("\n".join(str(m.get("content") or "") for m in msgs))
    if not texts:
        raise ForgeError(
            f"{asset.id} has no documents or chat records to deduplicate against",
            hint="pass a document or chat dataset as --against",
        )
    return texts


def synth_teacher_stage(
    ws: Workspace,
    *,
    endpoint: str,
    model: str,
    seeds: str | Path,
    n: int,
    against: list[str] | None = None,
    reward: str | None = None,
    reward_threshold: float = 0.5,
    teacher_asset: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    temperature: float = 0.7,
    max_tokens: int = 128,
    min_words: int = 3,
    dedup_threshold: float = 0.8,
    seed: int = 0,
    name: str | None = None,
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Self-instruct generation through `endpoint` → chat dataset asset, with lineage to the
    teacher (model asset when known, else its endpoint and model name in the metadata), the
    datasets deduplicated against, and the prompts (stored in the dataset folder)."""
    import openai

    if n < 1:
        raise ConfigError("--n must be at least 1")
    reg = open_registry(ws)
    seed_tasks = load_seed_tasks(seeds)
    against_ids = [reg.get_asset(a).id for a in against or []]
    teacher_id = reg.get_asset(teacher_asset).id if teacher_asset else None
    scorer = _reward_scorer(reward) if reward else None
    teacher = {"endpoint": endpoint, "model": model, "asset": teacher_id}
    config = {
        "teacher": teacher, "seeds": seed_tasks, "n": n, "against": against_ids,
        "reward": reward, "reward_threshold": reward_threshold, "temperature": temperature,
        "max_tokens": max_tokens, "min_words": min_words, "dedup_threshold": dedup_threshold,
        "seed": seed,
    }  # fmt: skip
    inputs = [*against_ids, *([teacher_id] if teacher_id else [])]
    name = name or f"synth-{model.replace('/', '-')}"

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        client = openai.OpenAI(
            base_url=endpoint, api_key=os.environ.get(api_key_env) or "none", max_retries=1
        )
        log: list[dict[str, Any]] = []
        records = self_instruct(
            client, model, seed_tasks, n=n, temperature=temperature, max_tokens=max_tokens,
            min_words=min_words, seed=seed, log=log,
        )  # fmt: skip
        training = [t for a in against_ids for t in _training_texts(reg, a)]
        filter_duplicates(records, training, threshold=dedup_threshold)
        if scorer is not None:
            filter_by_reward(records, scorer, reward_threshold)
        out = work / "synth"
        report = write_synth_dataset(out, records, {"teacher": teacher, "reward": reward})
        atomic_write_text(
            out / "requests.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in log)
        )
        atomic_write_text(out / "seeds.txt", "".join(f"{t}\n" for t in seed_tasks))
        meta = {
            "format": CHAT_FORMAT, "records": {"train": report["kept"]}, "synth": "self-instruct",
            "teacher": teacher, "reward": reward, "against": against_ids,
            **{k: report[k] for k in ("generated", "kept", "filtered")},
        }  # fmt: skip
        parents = [*against_ids, *([teacher_id] if teacher_id else [])]
        metrics = {k: report[k] for k in ("generated", "kept", "filtered")}
        metrics["requests"] = len(log)
        return [Output("dataset", name, out, meta, parents=parents)], metrics

    return run_stage(ws, "synth-teacher", config, inputs, body, force=force, notify=notify)
