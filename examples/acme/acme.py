"""The ACME demo corpus: a seeded, byte-for-byte deterministic set of a fictional company's
files (manuals, program pairs with tests, policies, memos, damaged documents, records with
planted PII, files ingest must skip), assembled from the section generators next to it."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from acme_common import GENERATOR_VERSION, section_counts, translation_is_heldout
from acme_documents import generate_damaged, generate_memos, generate_policies, generate_records
from acme_manuals import generate_manuals
from acme_programs import generate_programs

from forgeml.core.errors import DataError
from forgeml.core.io import fsync_dir


def _bad_files(rng: random.Random) -> dict[str, bytes]:
    blob = bytearray(rng.randbytes(4096))
    blob[0:8] = b"\x89ACME\x00\x01\x02"  # a NUL in the header, like most binary formats
    latin1 = (
        "Notes from the Zurich office (legacy terminal export)\n"
        "Meeting with Mr. M\u00fcller at the caf\u00e9 about the se\u00f1or Garc\u00eda "
        "account.\nThe fa\u00e7ade of the Northgate warehouse needs repair; cost "
        "\u00a3 1200.\n"
    )
    return {
        "assets/logo.bin": bytes(blob),
        "legacy/notes_latin1.txt": latin1.encode("latin-1"),
        "legacy/empty.txt": b"",
    }


def _json_compact(obj: dict | list) -> str:
    """JSON with one top-level key, and one list item, per line: readable and diff-able."""

    def block(v: object, indent: int) -> str:
        if isinstance(v, list) and v:
            pad = " " * (indent + 1)
            inner = ",\n".join(pad + json.dumps(x, ensure_ascii=False) for x in v)
            return "[\n" + inner + "\n" + " " * indent + "]"
        return json.dumps(v, ensure_ascii=False)

    if isinstance(obj, dict):
        items = ",\n".join(f" {json.dumps(k)}: {block(v, 1)}" for k, v in obj.items())
        return "{\n" + items + "\n}\n"
    return block(obj, 0) + "\n"


def build_corpus(seed: int = 0, scale: float = 1.0) -> tuple[dict[str, bytes], dict]:
    """All files of the corpus in memory (path -> bytes) and its manifest; writes nothing."""
    if scale <= 0:
        raise DataError(f"scale must be positive, got {scale}", "use e.g. --scale 1.0")

    def rng_for(section: str) -> random.Random:
        # A string seed is hashed with SHA-512 by `random`, so this is stable across runs
        # and unaffected by PYTHONHASHSEED; one stream per section keeps sections independent.
        return random.Random(f"acme:{seed}:{section}")

    counts = section_counts(scale)
    pairs = generate_programs(rng_for("programs"), counts["programs"])
    texts: dict[str, str] = {}
    for p in pairs:
        # The Python of the translation task's held-out programs is an answer key: it lives
        # under heldout/ (recipes exclude it), so a model trained on the corpus has seen the
        # ACME-CL listing but never its translation.
        python = f"{'heldout/' if translation_is_heldout(p['slug']) else ''}programs/{p['slug']}.py"
        texts[f"programs/{p['slug']}.acl"] = p["acl"]
        texts[python] = p["python"]
        test = {
            "program": f"programs/{p['slug']}.acl",
            "python": python,
            "purpose": p["purpose"],
            "cases": p["cases"],
        }
        texts[f"programs/tests/{p['slug']}.json"] = _json_compact(test)
    texts.update(generate_manuals(rng_for("manuals"), counts["manuals"]))
    policies, qa = generate_policies(rng_for("policies"), counts["policies"])
    texts.update(policies)
    texts["qa/policy_qa.json"] = _json_compact(qa)
    texts.update(generate_memos(rng_for("memos"), counts["memos"]))
    damaged, answers = generate_damaged(rng_for("damaged"), counts["damaged"], texts)
    texts.update(damaged)
    texts["damaged/answers.json"] = _json_compact(answers)
    records, planted = generate_records(rng_for("records"), scale)
    texts.update(records)
    texts["records/planted.json"] = _json_compact(
        {
            "note": "all values are fictional; phones use the 555-01xx fiction range",
            "items": planted,
        }
    )

    files = {path: body.encode("utf-8") for path, body in texts.items()}
    bad = _bad_files(rng_for("assets"))
    files.update(bad)

    by_folder: dict[str, dict[str, int]] = {}
    for path in sorted(files):
        folder = path.split("/")[0] if "/" in path else "."
        entry = by_folder.setdefault(folder, {"files": 0, "bytes": 0})
        entry["files"] += 1
        entry["bytes"] += len(files[path])
    manifest = {
        "name": "acme",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "files": len(files) + 1,
        "bytes": sum(len(b) for b in files.values()),
        "by_folder": by_folder,
        "program_pairs": len(pairs),
        "qa_items": len(qa),
        "damaged_documents": len(damaged),
        "planted_items": len(planted),
        "bad_files": {
            "assets/logo.bin": "binary",
            "legacy/notes_latin1.txt": "latin-1 text: ingest decodes it (charset detection)",
            "legacy/empty.txt": "empty",
        },
        "tasks": {
            "translation": "programs/tests/*.json",
            "infill": "damaged/answers.json",
            "qa": "qa/policy_qa.json",
            "redaction": "records/planted.json",
        },
        "answer_keys": [
            "damaged/answers.json",
            "qa/policy_qa.json",
            "records/planted.json",
            "heldout/",
        ],
    }
    files["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    return files, manifest


def generate_corpus(out_dir: Path, *, seed: int = 0, scale: float = 1.0) -> dict:
    """Write the ACME corpus under `out_dir` and return its manifest (also `manifest.json`).

    The tree is written into a sibling temp folder and renamed into place, so `out_dir` is
    either the old corpus or the complete new one. An existing `out_dir` is replaced only
    when it is empty or holds an earlier ACME corpus (it has an ACME `manifest.json`).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    files, manifest = build_corpus(seed, scale)
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            old = json.loads((out_dir / "manifest.json").read_text())
            is_acme = old.get("name") == "acme"
        except (OSError, ValueError):
            is_acme = False
        if not is_acme:
            raise DataError(
                f"{out_dir} is not empty and does not hold an ACME corpus",
                "choose a new folder for --out; nothing was written",
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for rel in sorted(files):
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[rel])
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
    return dict(manifest, seconds=round(time.perf_counter() - started, 3))


def corpus_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (relative posix path -> hex), for determinism checks."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
