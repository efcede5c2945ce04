"""Eval task kinds: one function per kind (chosen by `TASK_KINDS`), run over a suite.

Every kind returns per-example records (`scores` per metric, a `weight`, and what the model
produced) and the suite metrics are weighted means of them, so the gate can bootstrap any
KPI. `EvalModel` is the batched model side: log-likelihoods, greedy/seeded generation and
rolling-window negative log-likelihood, in the style of lm-evaluation-harness
(Gao et al., "A framework for few-shot language model evaluation", 2021).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from forgeml.core.errors import ConfigError, DataError
from forgeml.core.plugins import load_plugin
from forgeml.core.runtime import autocast
from forgeml.core.seeds import derive_seed
from forgeml.eval.media_scoring import LOWER_IS_BETTER
from forgeml.eval.scoring import resolve_scorer, weighted_mean
from forgeml.eval.suite import MEDIA_TASK_DEFAULTS, Examples, Suite, TaskSpec, load_examples
from forgeml.tokenizer.chat import BOS, EOS, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

# ---------------------------------------------------------------------------------------
# The model side


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0


class LanguageModel(Protocol):
    """What a task needs from a model (EvalModel, or a scripted fake in tests)."""

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(context, continuation) -> (sum of log p(continuation | context), is greedy)."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]: ...

    def rolling_nll(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """Each text -> (summed negative log-likelihood in nats, tokens predicted)."""
        ...


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for s in stops:
        if s and s in text:
            cut = min(cut, text.index(s))
    return text[:cut]


def read_model_tokenizer(model_dir: str | Path) -> Any:
    """The `tokenizers.Tokenizer` of a model folder's tokenizer.json."""
    from tokenizers import Tokenizer

    tok_file = Path(model_dir) / "tokenizer.json"
    if not tok_file.is_file():
        raise DataError(f"model folder {model_dir} has no tokenizer.json")
    return Tokenizer.from_file(str(tok_file))


class EvalModel:
    """A forgeml Transformer plus its tokenizer, evaluated in batches without padding masks:
    log-likelihood rows are right-padded (causal attention never looks right) and
    generation batches group prompts of equal token length."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 8,
    ) -> None:
        self.model = model.eval()
        self.tok = tokenizer
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_len = model.cfg.max_seq_len
        self.bos = tokenizer.token_to_id(BOS)
        self.eos = tokenizer.token_to_id(EOS)

    @classmethod
    def from_dir(
        cls, model_dir: str | Path, *, device: str = "cpu", dtype: str = "auto", batch_size=8
    ) -> EvalModel:
        from forgeml.models.hf_io import load_model

        tokenizer = read_model_tokenizer(model_dir)
        model = load_model(model_dir, device=device)
        return cls(model, tokenizer, device=device, dtype=dtype, batch_size=batch_size)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def _logits(self, rows: list[list[int]]) -> torch.Tensor:
        width = max(map(len, rows))
        batch = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            batch[i, : len(r)] = torch.tensor(r)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return self.model(batch.to(self.device)).float().cpu()

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        items = []
        for context, continuation in requests:
            # lm-eval's pair encoding: the continuation is what the whole adds to the context.
            ctx = [self.bos, *self.encode(context)]
            whole = [self.bos, *self.encode(context + continuation)]
            n_ctx = len(ctx) if whole[: len(ctx)] == ctx else len(ctx) - 1
            cont = whole[n_ctx:] or [self.eos]
            ids = (whole[:n_ctx] + cont)[-(self.max_len + 1) :]
            items.append((ids, len(cont)))
        out: list[tuple[float, bool] | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
        for first in range(0, len(order), self.batch_size):
            chunk = order[first : first + self.batch_size]
            logits = self._logits([items[i][0][:-1] for i in chunk])
            logp = F.log_softmax(logits, dim=-1)
            for row, i in enumerate(chunk):
                ids, n = items[i]
                targets = torch.tensor(ids[-n:])
                pos = torch.arange(len(ids) - 1 - n, len(ids) - 1)
                lp = logp[row, pos]
                total = float(lp.gather(1, targets[:, None]).sum())
                greedy = bool((lp.argmax(-1) == targets).all())
                out[i] = (total, greedy)
        return out  # type: ignore[return-value]

    def rolling_nll(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        # Disjoint windows of max_len predicted tokens (lm-eval's loglikelihood_rolling with
        # a context of one token): every token is predicted exactly once.
        windows: list[tuple[int, list[int]]] = []
        for t, text in enumerate(texts):
            ids = [self.bos, *self.encode(text)]
            for start in range(1, len(ids), self.max_len):
                windows.append((t, ids[start - 1 : start + self.max_len]))
        nll = [0.0] * len(texts)
        count = [0] * len(texts)
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][1]))
        for first in range(0, len(order), self.batch_size):
            chunk = order[first : first + self.batch_size]
            logits = self._logits([windows[i][1][:-1] for i in chunk])
            for row, i in enumerate(chunk):
                t, ids = windows[i]
                n = len(ids) - 1
                loss = F.cross_entropy(logits[row, :n], torch.tensor(ids[1:]), reduction="sum")
                nll[t] += float(loss)
                count[t] += n
        return list(zip(nll, count, strict=True))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        encoded = []
        for r in requests:
            ids = [self.bos, *self.encode(r.prompt)]
            encoded.append(ids[-(self.max_len - 1) :])
        groups: dict[tuple, list[int]] = {}
        for i, (r, ids) in enumerate(zip(requests, encoded, strict=True)):
            key = (len(ids), r.max_new_tokens, r.temperature, r.top_k, r.top_p, r.stop)
            groups.setdefault(key, []).append(i)
        out = [""] * len(requests)
        for members in groups.values():
            for first in range(0, len(members), self.batch_size):
                chunk = members[first : first + self.batch_size]
                texts = self._generate_batch(
                    [encoded[i] for i in chunk], [requests[i] for i in chunk]
                )
                for i, text in zip(chunk, texts, strict=True):
                    out[i] = text
        return out

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], reqs: list[GenerationRequest]) -> list[str]:
        from forgeml.models.sampling import filter_logits, sample_index

        r0 = reqs[0]
        n_prompt = len(prompts[0])
        total = min(self.max_len, n_prompt + r0.max_new_tokens)
        gens = [torch.Generator().manual_seed(r.seed) for r in reqs]
        cache = self.model.new_kv_cache(len(prompts), total, device=self.device)
        idx = torch.tensor(prompts, dtype=torch.long, device=self.device)
        with autocast(self.device, self.dtype):
            logits = self.model(idx, kv_cache=cache, start_pos=0)[:, -1].float().cpu()
        new: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for step in range(total - n_prompt):
            tokens = []
            for b, row in enumerate(logits):
                if r0.temperature == 0:
                    tok = int(torch.argmax(row))
                else:
                    lg = filter_logits(row / r0.temperature, top_k=r0.top_k, top_p=r0.top_p)
                    tok = sample_index(torch.softmax(lg, -1), gens[b])
                if not done[b]:
                    if tok == self.eos:
                        done[b] = True
                    else:
                        new[b].append(tok)
                tokens.append(tok)
            if r0.stop and step % 4 == 3:
                for b in range(len(new)):
                    if not done[b] and any(s in self.tok.decode(new[b]) for s in r0.stop):
                        done[b] = True
            if all(done) or step + 1 == total - n_prompt:
                break
            idx = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
            with autocast(self.device, self.dtype):
                logits = self.model(idx, kv_cache=cache, start_pos=n_prompt + step)
            logits = logits[:, -1].float().cpu()
        return [_cut_at_stop(self.tok.decode(n, skip_special_tokens=True), r0.stop) for n in new]


# ---------------------------------------------------------------------------------------
# Prompts


def render(template: str, record: dict[str, Any], where: str) -> str:
    """`template.format(**record)` with an error that names the task and the missing field."""
    try:
        return template.format_map(record)
    except (KeyError, IndexError) as exc:
        raise DataError(
            f"{where}: template {template!r} needs field {exc} missing from record "
            f"{record.get('id')!r}",
            hint=f"record fields: {', '.join(sorted(record))}",
        ) from None


def fewshot_prefix(
    task: TaskSpec, index: int, record: dict, pool: list[dict], shot: Callable[[dict], str]
) -> str:
    """k shots drawn from the pool (never the example itself), the same for every model:
    the draw is seeded by the suite seed and the example's position."""
    fs = task.fewshot
    if fs.k == 0:
        return ""
    candidates = [r for r in pool if r["id"] != record["id"]]
    if len(candidates) < fs.k:
        raise DataError(f"task {task.name}: {fs.k} shots asked, {len(candidates)} available")
    rng = random.Random(f"{fs.seed}:{index}")
    return "".join(shot(r) + fs.separator for r in rng.sample(candidates, fs.k))


@dataclass
class TaskResult:
    name: str
    kind: str
    primary: str
    metrics: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)


def _aggregate(name: str, kind: str, primary: str, examples: list[dict]) -> TaskResult:
    metrics: dict[str, float] = {}
    if examples:
        weights = [e.get("weight", 1.0) for e in examples]
        for metric in examples[0]["scores"]:
            metrics[metric] = weighted_mean([e["scores"][metric] for e in examples], weights)
    metrics["n"] = float(len(examples))
    return TaskResult(name, kind, primary, metrics, examples)


@dataclass(frozen=True)
class RunOptions:
    seed: int = 0


# ---------------------------------------------------------------------------------------
# Task kinds


def run_multiple_choice(
    lm: LanguageModel, task: TaskSpec, records: list[dict], pool: list[dict], opts: RunOptions
) -> TaskResult:
    """Pick the choice with the highest log-likelihood (acc) and with the highest
    log-likelihood per byte (acc_norm, as in lm-eval)."""
    requests, spans, answers = [], [], []
    for i, rec in enumerate(records):
        choices = rec.get(task.choices)
        if not isinstance(choices, list) or len(choices) < 2:
            raise DataError(f"task {task.name}: record {rec['id']} needs a list '{task.choices}'")
        gold = rec.get(task.answer)
        gold = choices.index(gold) if isinstance(gold, str) and gold in choices else gold
        if not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise DataError(f"task {task.name}: record {rec['id']}: bad answer {gold!r}")

        def shot(r: dict) -> str:
            right = r[task.answer]
            right = r[task.choices][right] if isinstance(right, int) else right
            return render(task.prompt, r, task.name) + task.choice_prefix + str(right)

        context = fewshot_prefix(task, i, rec, pool, shot) + render(task.prompt, rec, task.name)
        spans.append((len(requests), len(choices)))
        requests += [(context, task.choice_prefix + str(c)) for c in choices]
        answers.append(gold)
    lls = lm.loglikelihood(requests)
    examples = []
    for rec, (start, n), gold in zip(records, spans, answers, strict=True):
        ll = [lls[start + j][0] for j in range(n)]
        conts = [requests[start + j][1] for j in range(n)]
        norm = [x / max(len(c.encode()), 1) for x, c in zip(ll, conts, strict=True)]
        pick = max(range(n), key=ll.__getitem__)
        pick_norm = max(range(n), key=norm.__getitem__)
        examples.append(
            {
                "id": rec["id"],
                "scores": {"acc": float(pick == gold), "acc_norm": float(pick_norm == gold)},
                "prediction": pick,
                "answer": gold,
                "loglikelihoods": ll,
            }
        )
    return _aggregate(task.name, task.kind, "acc", examples)


def _generate_from_prompts(
    lm: LanguageModel, task: TaskSpec, records: list[dict], pool: list[dict], opts: RunOptions
) -> tuple[list[str], list[str]]:
    """The few-shot prompt of each record (shots show prompt + target) and the model's output."""

    def shot(r: dict) -> str:
        return render(task.prompt, r, task.name) + render(task.target, r, task.name)

    prompts = [
        fewshot_prefix(task, i, rec, pool, shot) + render(task.prompt, rec, task.name)
        for i, rec in enumerate(records)
    ]
    return prompts, lm.generate(_generation_requests(task, prompts, opts))


def _generation_requests(task: TaskSpec, prompts: list[str], opts: RunOptions) -> list:
    return [
        GenerationRequest(
            prompt=p,
            max_new_tokens=task.max_new_tokens,
            stop=tuple(task.stop),
            temperature=task.temperature,
            top_k=task.top_k,
            top_p=task.top_p,
            # per-example seed: sampled outputs do not depend on batching or order
            seed=derive_seed(opts.seed, "eval.example", i),
        )
        for i, p in enumerate(prompts)
    ]


def run_generate(
    lm: LanguageModel, task: TaskSpec, records: list[dict], pool: list[dict], opts: RunOptions
) -> TaskResult:
    """Generate from the prompt and score against the target with each of `task.scorers`."""
    scorers = {name: resolve_scorer(name) for name in task.scorers}
    prompts, outputs = _generate_from_prompts(lm, task, records, pool, opts)
    examples = []
    for rec, prompt, out in zip(records, prompts, outputs, strict=True):
        ref = render(task.target, rec, task.name)
        scores = {name: float(fn(out, ref)) for name, fn in scorers.items()}
        examples.append(
            {"id": rec["id"], "scores": scores, "prompt": prompt, "output": out, "reference": ref}
        )
    return _aggregate(task.name, task.kind, task.scorers[0], examples)


def fim_prompt(prefix: str, suffix: str) -> str:
    """Prefix-suffix-middle order of "Efficient Training of Language Models to Fill in the
    Middle" (Bavarian et al., arXiv:2207.14255), with forgeml's special tokens."""
    return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


def run_infill(
    lm: LanguageModel, task: TaskSpec, records: list[dict], pool: list[dict], opts: RunOptions
) -> TaskResult:
    """Fill in the middle between a prefix and a suffix; exact match on the middle."""
    prompts = [
        fim_prompt(render(task.prefix, r, task.name), render(task.suffix, r, task.name))
        for r in records
    ]
    outputs = lm.generate(_generation_requests(task, prompts, opts))
    scorers = {name: resolve_scorer(name) for name in task.scorers}
    examples = []
    for rec, out in zip(records, outputs, strict=True):
        ref = render(task.target, rec, task.name)
        scores = {name: float(fn(out, ref)) for name, fn in scorers.items()}
        examples.append({"id": rec["id"], "scores": scores, "output": out, "reference": ref})
    return _aggregate(task.name, task.kind, task.scorers[0], examples)


def run_perplexity(
    lm: LanguageModel, task: TaskSpec, records: list[dict], pool: list[dict], opts: RunOptions
) -> TaskResult:
    """Bits per byte of each document (weight: its bytes), so the task metric is
    total nats / (ln 2 * total bytes) as in "The Pile" (arXiv:2101.00027)."""
    texts = [render(task.text, r, task.name) for r in records]
    results = lm.rolling_nll(texts)
    examples = []
    for rec, text, (nll, n_tok) in zip(records, texts, results, strict=True):
        n_bytes = len(text.encode("utf-8"))
        if n_bytes == 0:
            continue
        examples.append(
            {
                "id": rec["id"],
                "scores": {"bits_per_byte": nll / (math.log(2) * n_bytes)},
                "weight": float(n_bytes),
                "nll": nll,
                "tokens": n_tok,
                "bytes": n_bytes,
            }
        )
    result = _aggregate(task.name, task.kind, "bits_per_byte", examples)
    tokens = sum(e["tokens"] for e in examples)
    if tokens:
        loss = sum(e["nll"] for e in examples) / tokens
        result.metrics.update(token_loss=loss, perplexity=math.exp(min(loss, 50.0)))
    return result


def _io_cases(completion: str, record: dict, task: TaskSpec) -> float:
    from forgeml.eval.sandbox import score_io_cases

    return score_io_cases(completion, record[task.cases], timeout_s=task.timeout_s)[0]


CHECKERS: dict[str, Callable[[str, dict, TaskSpec], float]] = {
    "io_cases": _io_cases,
}


def run_code_exec(
    lm: LanguageModel, task: TaskSpec, records: list[dict], pool: list[dict], opts: RunOptions
) -> TaskResult:
    """Generate a program and run it on the record's test cases: `pass_rate` is the share of
    cases passed, `pass` is 1 when all pass (pass@1 with one sample, arXiv:2107.03374)."""
    checker = CHECKERS.get(task.checker) or load_plugin(task.checker)
    if not callable(checker):
        raise ConfigError(f"task {task.name}: checker '{task.checker}' is not callable")
    _, outputs = _generate_from_prompts(lm, task, records, pool, opts)
    examples = []
    for rec, out in zip(records, outputs, strict=True):
        rate = float(checker(out, rec, task))
        examples.append(
            {
                "id": rec["id"],
                "scores": {"pass": float(rate == 1.0), "pass_rate": rate},
                "output": out,
            }
        )
    return _aggregate(task.name, task.kind, "pass", examples)


def run_custom(
    lm: LanguageModel, task: TaskSpec, records: list[dict], pool: list[dict], opts: RunOptions
) -> TaskResult:
    """`function(lm, records, task) -> list of {"id", "scores": {metric: value}, ...}`;
    the first metric of the first record is the primary one."""
    fn = load_plugin(task.function or "")
    if not callable(fn):
        raise ConfigError(f"task {task.name}: '{task.function}' is not callable")
    examples = list(fn(lm, records, task))
    if not examples or "scores" not in examples[0]:
        raise DataError(f"custom task {task.name} returned no per-example scores")
    return _aggregate(task.name, task.kind, next(iter(examples[0]["scores"])), examples)


TaskFn = Callable[[LanguageModel, TaskSpec, list[dict], list[dict], RunOptions], TaskResult]

TASK_KINDS: dict[str, TaskFn] = {
    "multiple_choice": run_multiple_choice,
    "generate": run_generate,
    "infill": run_infill,
    "perplexity": run_perplexity,
    "code_exec": run_code_exec,
    "custom": run_custom,
}


def task_data(suite: Suite, task: TaskSpec, registry=None) -> tuple[Examples, list[dict]]:
    """A task's examples and its few-shot pool (its own data unless fewshot.data is set)."""
    examples = load_examples(task.data, suite.data_root, registry)
    pool = examples.records
    if task.fewshot.data is not None:
        pool = load_examples(task.fewshot.data, suite.data_root, registry).records
    return examples, pool


def run_task(
    lm: LanguageModel, suite: Suite, task: TaskSpec, examples: Examples, pool: list[dict]
) -> TaskResult:
    if task.kind in MEDIA_TASK_DEFAULTS:  # image_qa, caption, transcription, page_transcription
        from forgeml.eval.media_suite import run_media_kind

        return run_media_kind(lm, task, examples.records)
    return TASK_KINDS[task.kind](lm, task, examples.records, pool, RunOptions(suite.spec.seed))


def kpis_of(task: TaskSpec, result: TaskResult) -> list[dict[str, Any]]:
    """The task's KPIs, or its primary metric (lower is better for perplexity) if none."""
    if task.kpis:
        return [k.model_dump() for k in task.kpis]
    lower = result.primary in ("bits_per_byte", "token_loss", "perplexity", *LOWER_IS_BETTER)
    return [
        {"metric": result.primary, "higher_is_better": not lower, "tolerance": 0.0, "minimum": None}
    ]
