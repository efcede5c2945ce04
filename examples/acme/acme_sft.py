"""The ACME chat SFT data (OpenAI format): policy Q&A, ACME-CL -> Python translation requests
and tool-use traces for ACME's internal tools (data/sft_tools.yaml)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

from acme_common import (
    GENERATOR_VERSION,
    SYSTEMS,
    load_data,
    random_date,
    section_counts,
    sft_is_heldout,
)
from acme_documents import generate_policies
from acme_programs import generate_programs, snippet_pairs

from forgeml.core.errors import DataError
from forgeml.core.io import fsync_dir

SFT_SYSTEM = "You are the ACME Corp internal assistant. Answer briefly and exactly."
SFT_TOOLS: list[dict] = load_data("sft_tools")["tools"]
_PROGRAM_NAME = re.compile(r"^PROGRAM\s+([A-Z0-9-]+)\.", re.MULTILINE)
_STATUS_QUESTIONS = (
    ("Is {system} up right now?", "status"),
    ("Can I run jobs on {system} at the moment?", "status"),
    ("When is the next maintenance window for {system}?", "window"),
    ("When does {system} next go down for maintenance?", "window"),
)
_TRANSLATE_ASKS = (
    "Translate this ACME-CL program to Python:",
    "Rewrite this ACME-CL listing as an equivalent Python program:",
    "Please port this program from ACME-CL to Python.",
)


def _call(call_id: str, name: str, arguments: dict) -> dict:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }


def _tool_result(call_id: str, result: dict) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)}


def _policy_statement(policy_text: str, answer: str) -> str:
    for line in policy_text.splitlines():
        if answer in line:
            return re.sub(r"^\d+\.\d+\.\s*", "", line.strip())
    raise AssertionError(f"answer {answer!r} is not in its policy")  # generator bug


def build_sft_records(seed: int = 0, scale: float = 1.0) -> list[dict]:
    """The chat SFT records (each with `metadata.task` and `metadata.split`), deterministic.

    - policy_qa: a policy question answered directly (metadata.answer: the exact answer);
    - translate: an ACME-CL program to translate (metadata.tests: execution test cases);
    - translate_snippet: the same for a short program of two to four statements;
    - tool_*: the assistant picks one of ACME's internal tools (`SFT_TOOLS`), reads its
      result and answers: running a program, searching a policy, a system's status.
    The same seed and scale draw the same programs and policies as `build_corpus`.
    """
    if scale <= 0:
        raise DataError(f"scale must be positive, got {scale}", "use e.g. --scale 1.0")

    def rng_for(section: str) -> random.Random:
        return random.Random(f"acme:{seed}:{section}")

    counts = section_counts(scale)
    pairs = generate_programs(rng_for("programs"), counts["programs"])
    policies, qa = generate_policies(rng_for("policies"), counts["policies"])
    policy_text = {
        path.split("/")[1].split("_")[0].upper(): text for path, text in policies.items()
    }
    rng = rng_for("sft")
    system = {"role": "system", "content": SFT_SYSTEM}
    records: list[dict] = []

    def add(key: str, task: str, messages: list[dict], tools: bool = False, **meta) -> None:
        record = {"id": key, "messages": [system, *messages]}
        if tools:
            record["tools"] = SFT_TOOLS
        split = "heldout" if sft_is_heldout(key) else "train"
        record["metadata"] = {"task": task, "split": split, **meta}
        records.append(record)

    for i, item in enumerate(qa):
        if i % 3 == 2:  # every third question goes through the policy search tool
            statement = _policy_statement(policy_text[item["source"]], item["answer"])
            call = f"call_{item['id'].lower()}"
            query = {"policy_id": item["source"], "query": item["question"]}
            add(f"tool-policy-{item['id']}", "tool_policy", [
                {"role": "user", "content": item["question"]},
                _call(call, "search_policy", query),
                _tool_result(call, {"policy": item["source"], "statement": statement}),
                {"role": "assistant", "content": item["answer"]},
            ], tools=True, answer=item["answer"], tool="search_policy")  # fmt: skip
        else:
            add(f"qa-{item['id']}", "policy_qa", [
                {"role": "user", "content": item["question"]},
                {"role": "assistant", "content": item["answer"]},
            ], answer=item["answer"], source=item["source"])  # fmt: skip
    for p in pairs:
        name = _PROGRAM_NAME.search(p["acl"]).group(1)
        ask = rng.choice(_TRANSLATE_ASKS)
        add(f"translate-{p['slug']}", "translate", [
            {"role": "user", "content": f"{ask}\n\n```acme-cl\n{p['acl']}```"},
            {"role": "assistant", "content": f"```python\n{p['python']}```"},
        ], program=name, slug=p["slug"], tests=p["cases"])  # fmt: skip
        case = rng.choice(p["cases"])
        call = f"call_{p['slug']}"
        inputs = ", ".join(str(v) for v in case["inputs"])
        output = "\n".join(case["expected"])
        add(f"tool-run-{p['slug']}", "tool_run", [
            {"role": "user", "content": f"What does {name} print for the inputs {inputs}?"},
            _call(call, "run_acme_program", {"program": name, "inputs": case["inputs"]}),
            _tool_result(call, {"program": name, "output": case["expected"]}),
            {"role": "assistant", "content": f"{name} prints:\n{output}"},
        ], tools=True, answer=output, tool="run_acme_program")  # fmt: skip
    for p in snippet_pairs(seed, scale):
        ask = rng.choice(_TRANSLATE_ASKS)
        add(f"translate-{p['slug']}", "translate_snippet", [
            {"role": "user", "content": f"{ask}\n\n```acme-cl\n{p['acl']}```"},
            {"role": "assistant", "content": f"```python\n{p['python']}```"},
        ], slug=p["slug"], tests=p["cases"])  # fmt: skip
    for i in range(max(4, round(60 * scale))):
        sys_name = SYSTEMS[i % len(SYSTEMS)]
        status = rng.choice(("up", "up", "degraded", "maintenance"))
        day = random_date(rng, 2025, 2025)
        start = rng.choice((20, 21, 22, 23))
        window = f"{day.isoformat()} {start:02d}:00-{(start + rng.randint(2, 5)) % 24:02d}:00"
        question, asked = rng.choice(_STATUS_QUESTIONS)
        if asked == "status":
            answer = {"up": f"Yes, {sys_name} is up.",
                      "degraded": f"{sys_name} is up but degraded; expect slow jobs.",
                      "maintenance": f"No, {sys_name} is in maintenance until {window[-5:]}."}[status]  # fmt: skip
        else:
            answer = f"The next maintenance window for {sys_name} is {window}."
        call = f"call_status_{i}"
        add(f"tool-status-{i}", "tool_status", [
            {"role": "user", "content": question.format(system=sys_name)},
            _call(call, "system_status", {"system": sys_name}),
            _tool_result(call, {"system": sys_name, "status": status, "next_window": window}),
            {"role": "assistant", "content": answer},
        ], tools=True, answer=answer, tool="system_status")  # fmt: skip
    return records


def generate_sft_data(out_dir: Path, *, seed: int = 0, scale: float = 1.0) -> dict:
    """Write `train.jsonl`, `heldout.jsonl`, `tools.json` and `manifest.json` under `out_dir`
    (a folder of its own, not inside the pre-training corpus: held-out answers must not leak
    into pre-training). Replaced atomically, like `generate_corpus`; returns the manifest."""
    out_dir = Path(out_dir)
    records = build_sft_records(seed, scale)
    files = {
        split: "".join(
            json.dumps(r, ensure_ascii=False) + "\n"
            for r in records
            if r["metadata"]["split"] == split
        )
        for split in ("train", "heldout")
    }
    by_task: dict[str, dict[str, int]] = {}
    for r in records:
        entry = by_task.setdefault(r["metadata"]["task"], {"train": 0, "heldout": 0})
        entry[r["metadata"]["split"]] += 1
    manifest = {
        "name": "acme-sft",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "records": {s: sum(v[s] for v in by_task.values()) for s in ("train", "heldout")},
        "by_task": by_task,
    }
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            is_ours = json.loads((out_dir / "manifest.json").read_text()).get("name") == "acme-sft"
        except (OSError, ValueError):
            is_ours = False
        if not is_ours:
            raise DataError(
                f"{out_dir} is not empty and does not hold ACME SFT data",
                "choose a new folder for --out; nothing was written",
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "train.jsonl").write_text(files["train"], encoding="utf-8")
        (tmp / "heldout.jsonl").write_text(files["heldout"], encoding="utf-8")
        (tmp / "tools.json").write_text(json.dumps(SFT_TOOLS, indent=1) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
