"""Rule-based synthetic tasks from a document dataset: QA from headings and definitions,
infill (a sentence cut out of a paragraph), translation pairs from paired files (same folder
and stem, two extensions: `0001_paycalc.acl` + `0001_paycalc.py`). Deterministic per seed.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.parquet as pq

from forgeml.core.errors import ConfigError, ForgeError
from forgeml.core.workspace import Workspace
from forgeml.pipeline.datasets import documents_parquet
from forgeml.pipeline.runtime import Notify, Output, StageResult, run_stage
from forgeml.registry import open_registry
from forgeml.synth.records import CHAT_FORMAT, SynthRecord, filter_duplicates, write_synth_dataset

RULES = ("qa", "infill", "translation")
GAP = "[GAP]"
LANGUAGES = {
    "py": "Python", "js": "JavaScript", "ts": "TypeScript", "java": "Java", "c": "C",
    "cpp": "C++", "cs": "C#", "go": "Go", "rs": "Rust", "rb": "Ruby", "cob": "COBOL",
    "cbl": "COBOL", "f90": "Fortran", "sql": "SQL", "sh": "shell", "md": "Markdown",
}  # fmt: skip

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_BOLD_DEF = re.compile(
    r"^\s*(?:[-*]\s+)?\*\*(?P<term>[^*]{2,60})\*\*\s*[:\u2014-]\s*(?P<d>.{10,})$"
)
_SENT_DEF = re.compile(
    r"(?P<sent>(?:^|(?<=[.!?]\s))(?P<term>[A-Z][\w/-]*(?:[ \t]+[\w/-]+){0,4})"
    r"[ \t]+(?:means|is defined as|refers to|stands for)[ \t]+[^.!?\n]{5,300}[.!?])",
    re.M,
)
_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.I)
_SENTENCE = re.compile(r"[^\s][^\n]*?[.!?](?=\s|$)")  # ends before a space: not `X.` in code


def _rid(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _sections(text: str) -> Iterator[tuple[str, str]]:
    """(heading, body) of markdown sections, outside fenced code blocks."""
    heading, body, fenced = None, [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m:
            if heading is not None:
                yield heading, "\n".join(body).strip()
            heading, body = m.group(2).strip(), []
        elif heading is not None:
            body.append(line)
    if heading is not None:
        yield heading, "\n".join(body).strip()


def _first_paragraph(body: str, max_chars: int) -> str:
    for para in re.split(r"\n\s*\n", body):
        para = para.strip()
        if para and not para.startswith(("```", "|", "#")):
            return para[:max_chars]
    return ""


def qa_records(doc: dict[str, Any], max_chars: int = 600) -> Iterator[SynthRecord]:
    """Questions from section headings (answered by the section's first paragraph) and from
    definitions ('**Term**: ...', 'X means ...', 'X is defined as ...')."""
    text, path = doc["text"], doc["path"]
    sections = list(_sections(text))
    title = sections[0][0] if sections else PurePosixPath(path).stem
    src = {"document": doc["doc_id"], "path": path}
    for heading, body in sections[1:]:
        answer = _first_paragraph(body, max_chars)
        if answer:
            q = f'In "{title}", what does the section "{heading}" say?'
            yield SynthRecord(_rid("qa-heading", doc["doc_id"], heading), "qa-heading", q,
                              answer, dict(src, heading=heading))  # fmt: skip
    for line in text.splitlines():
        m = _BOLD_DEF.match(line)
        if m:
            term = m.group("term").strip()
            yield SynthRecord(_rid("qa-def", doc["doc_id"], term), "qa-definition",
                              f"What is {term}?", m.group("d").strip()[:max_chars], dict(src, term=term))  # fmt: skip
    for m in _SENT_DEF.finditer(text):
        term = _ARTICLE.sub("", m.group("term").strip())
        yield SynthRecord(_rid("qa-def", doc["doc_id"], term, m.group("sent")), "qa-definition",
                          f"What does {term} mean?", m.group("sent").strip(), dict(src, term=term))  # fmt: skip


def infill_records(
    doc: dict[str, Any], rng: random.Random, per_doc: int = 2, min_chars: int = 120
) -> Iterator[SynthRecord]:
    """Cut one sentence (not the first) out of up to `per_doc` prose paragraphs."""
    paragraphs = [
        p.strip() for p in re.split(r"\n\s*\n", doc["text"])
        if len(p.strip()) >= min_chars and not p.lstrip().startswith(("```", "#", "|", "-", "*"))
    ]  # fmt: skip
    for para in rng.sample(paragraphs, min(per_doc, len(paragraphs))):
        sentences = [m for m in _SENTENCE.finditer(para) if len(m.group().strip()) >= 15]
        if len(sentences) < 2:
            continue
        m = rng.choice(sentences[1:])
        start = m.start()
        gapped = f"{para[:start]}{GAP}{para[m.end() :]}"
        prompt = f"Fill in the gap marked {GAP} in this text:\n\n{gapped}"
        yield SynthRecord(_rid("infill", doc["doc_id"], para, m.group()), "infill", prompt,
                          m.group().strip(), {"document": doc["doc_id"], "path": doc["path"]})  # fmt: skip


def translation_records(
    docs: Iterable[dict[str, Any]], pairs: list[tuple[str, str]], languages: dict[str, str]
) -> Iterator[SynthRecord]:
    """Pairs of files with the same folder and stem: source extension -> target extension."""
    by_key: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for doc in docs:
        if doc.get("locator"):
            continue  # a record or page of a file, not the whole file
        p = PurePosixPath(doc["path"])
        by_key[(doc["source"], str(p.parent), p.stem, p.suffix.lstrip("."))] = doc
    for (source, folder, stem, ext), src in sorted(by_key.items()):
        for src_ext, tgt_ext in pairs:
            tgt = by_key.get((source, folder, stem, tgt_ext)) if ext == src_ext else None
            if tgt is None:
                continue
            s_lang, t_lang = languages.get(src_ext, src_ext), languages.get(tgt_ext, tgt_ext)
            prompt = (f"Translate this {s_lang} program to {t_lang}:\n\n"
                      f"```{src_ext}\n{src['text'].rstrip()}\n```")  # fmt: skip
            answer = f"```{tgt_ext}\n{tgt['text'].rstrip()}\n```"
            yield SynthRecord(
                _rid("translation", src["doc_id"], tgt["doc_id"]), "translation", prompt, answer,
                {"source_document": src["doc_id"], "target_document": tgt["doc_id"],
                 "path": src["path"], "target_path": tgt["path"]},
            )  # fmt: skip


def parse_pairs(specs: list[str]) -> list[tuple[str, str]]:
    """'acl:py' -> ('acl', 'py')."""
    out = []
    for spec in specs:
        a, sep, b = spec.partition(":")
        a, b = a.strip().lstrip("."), b.strip().lstrip(".")
        if not sep or not a or not b:
            raise ConfigError(
                f"translation pair '{spec}' is not SRC:TGT", hint="e.g. --pair acl:py"
            )
        out.append((a, b))
    return out


def read_documents(parquet: Path) -> list[dict[str, Any]]:
    cols = ["doc_id", "text", "path", "source", "type", "locator"]
    return pq.read_table(parquet, columns=cols).to_pylist()


def rule_records(
    docs: list[dict[str, Any]],
    *,
    rules: Iterable[str] = RULES,
    pairs: list[tuple[str, str]] | None = None,
    languages: dict[str, str] | None = None,
    infill_per_doc: int = 2,
    exclude: Iterable[str] = (),
    seed: int = 0,
) -> list[SynthRecord]:
    """Every rule-based record of `docs` (but those whose path matches an `exclude` glob),
    in a deterministic order."""
    rules = set(rules)
    exclude = list(exclude)
    docs = [d for d in docs if not any(PurePosixPath(d["path"]).match(g) for g in exclude)]
    if unknown := rules - set(RULES):
        raise ConfigError(f"unknown rule(s) {sorted(unknown)}", hint=f"use {', '.join(RULES)}")
    records: list[SynthRecord] = []
    paired_exts = {e for pair in pairs or [] for e in pair}
    for doc in docs:
        if PurePosixPath(doc["path"]).suffix.lstrip(".") in paired_exts or doc["type"] == "code":
            continue  # programs feed translation pairs, not prose tasks
        if "qa" in rules:
            records.extend(qa_records(doc))
        if "infill" in rules:
            rng = random.Random(f"{seed}:{doc['doc_id']}")
            records.extend(infill_records(doc, rng, per_doc=infill_per_doc))
    if "translation" in rules and pairs:
        names = {**LANGUAGES, **(languages or {})}
        records.extend(translation_records(docs, pairs, names))
    return records


def synth_rules_stage(
    ws: Workspace,
    dataset_ref: str,
    *,
    rules: list[str] | None = None,
    pairs: list[str] | None = None,
    languages: dict[str, str] | None = None,
    infill_per_doc: int = 2,
    exclude: list[str] | None = None,
    dedup_threshold: float = 0.8,
    seed: int = 0,
    name: str | None = None,
    force: bool = False,
    notify: Notify | None = None,
) -> StageResult:
    """Rule-based tasks from a document dataset → chat dataset asset (lineage to the dataset)."""
    dataset = open_registry(ws).get_asset(dataset_ref)
    parquet = documents_parquet(dataset)
    config = {
        "rules": sorted(rules or RULES), "pairs": parse_pairs(pairs or []),
        "languages": languages or {}, "infill_per_doc": infill_per_doc,
        "exclude": list(exclude or []),
        "dedup_threshold": dedup_threshold, "seed": seed,
    }  # fmt: skip
    name = name or f"{dataset.name}-synth-rules"

    def body(work: Path) -> tuple[list[Output], dict[str, Any]]:
        records = rule_records(
            read_documents(parquet), rules=config["rules"], pairs=config["pairs"],
            languages=languages, infill_per_doc=infill_per_doc, exclude=config["exclude"],
            seed=seed,
        )  # fmt: skip
        if not records:
            raise ForgeError(
                f"no rule matched any document of {dataset.id}",
                hint="markdown headings, definitions, prose paragraphs or --pair SRC:TGT files",
            )
        filter_duplicates(records, threshold=dedup_threshold)
        report = write_synth_dataset(work / "synth", records, {"rules": config["rules"]})
        meta = {"format": CHAT_FORMAT, "records": {"train": report["kept"]}, "synth": "rules",
                "dataset": dataset.id, **{k: report[k] for k in ("generated", "kept", "filtered")}}  # fmt: skip
        out = Output("dataset", name, work / "synth", meta, parents=[dataset.id])
        return [out], {k: report[k] for k in ("generated", "kept", "filtered", "kept_by_task")}

    return run_stage(ws, "synth-rules", config, [dataset.id], body, force=force, notify=notify)


__all__ = ["rule_records", "synth_rules_stage"]
