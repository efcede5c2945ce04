"""Media KPI suites in `forgeml eval run`: image QA, captioning, speech and page transcription
on a tiny random vision+audio LM saved to disk, through the Python API and the CLI; the gate
fails a candidate whose CER/WER is higher (lower is better); drift between two evals; one
clear line for a text-only model; scorers against hand-computed values and jiwer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from forgeml.cli import app
from forgeml.core.config import ModelConfig
from forgeml.core.errors import ConfigError, DataError, ForgeError
from forgeml.eval.drift import DriftThresholds
from forgeml.eval.gate import load_eval_record
from forgeml.eval.media_generate import MediaPrompt, score_media_answers
from forgeml.eval.media_scoring import (
    cider_d,
    edit_distance,
    normalize_transcript,
    python_edit_distance,
)
from forgeml.eval.media_suite import eval_drift_report, run_media_kind
from forgeml.eval.scoring import token_f1
from forgeml.eval.suite import DataSpec, TaskSpec, load_examples, load_suite, suite_from_dict
from forgeml.pipeline.eval_suite_stage import gate
from forgeml.pipeline.evaluate import evaluate_model
from forgeml.registry import open_registry

pytest.importorskip("PIL", reason="pillow (the multimodal extra) is not installed")
soundfile = pytest.importorskip("soundfile", reason="soundfile (multimodal extra) not installed")

WORDS = ["valve", "pump", "tank", "order", "unit", "red", "blue", "gauge", "pipe", "seal"]


def _write_media(root: Path) -> dict[str, str]:
    """Images and sine-tone WAVs with their JSONL files; returns media path -> answer."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    answers: dict[str, str] = {}

    def page(path: Path, text: str) -> None:
        image = Image.new("RGB", (96, 48), "white")
        ImageDraw.Draw(image).text((4, 16), text, fill="black")
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)

    def rows(folder: str, n: int, write, prompt: str, answer) -> None:
        lines = []
        for i in range(n):
            text = " ".join(rng.choice(WORDS, 3))
            name, value = write(root / folder, i, text), answer(text, i)
            answers[str((root / folder / name).resolve())] = value
            field = "audio" if name.endswith(".wav") else "image"
            lines.append({"id": f"{folder}{i}", field: name, "prompt": prompt, "answer": value})
        (root / folder / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    def image(folder: Path, i: int, text: str) -> str:
        page(folder / f"p{i}.png", text)
        return f"p{i}.png"

    def tone(folder: Path, i: int, text: str) -> str:
        t = np.arange(6000) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t).astype(np.float32)
        soundfile.write(folder / f"t{i}.wav", wave, 16000)
        return f"t{i}.wav"

    rows("qa", 6, image, "which unit is named?", lambda text, i: text.split()[0])
    rows("captions", 4, image, "describe", lambda text, i: [text, f"the {text}"])
    (root / "speech").mkdir()
    rows("speech", 12, tone, "transcribe the recording", lambda text, i: text)
    rows("pages", 12, image, "transcribe the page", lambda text, i: f"work order {i} {text}")
    return answers


SUITE = {
    "name": "mm",
    "tasks": [
        {"name": "qa", "kind": "image_qa", "data": {"path": "qa/data.jsonl"}, "max_new_tokens": 6},
        {"name": "captions", "kind": "caption", "data": {"path": "captions/data.jsonl"},
         "max_new_tokens": 6},
        {"name": "speech", "kind": "transcription", "data": {"path": "speech/data.jsonl"},
         "max_new_tokens": 8},
        {"name": "pages", "kind": "page_transcription", "data": {"path": "pages/data.jsonl"},
         "max_new_tokens": 8,
         "kpis": [{"metric": "cer", "higher_is_better": False, "minimum": 0.5}]},
        {"name": "words", "kind": "generate", "data": {"inline": [{"q": "pump", "a": "tank"}]},
         "prompt": "{q} feeds the", "target": " {a}", "max_new_tokens": 3},
    ],
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model decodes a token at a time: one thread is fastest, and much faster on a
    loaded machine where a second thread waits for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from forgeml.models.audio import AudioConfig
    from forgeml.models.hf_io import save_model
    from forgeml.models.hf_multimodal_io import save_multimodal
    from forgeml.models.multimodal import MultimodalConfig, MultimodalLM
    from forgeml.models.registry import build_model
    from forgeml.models.vision import VisionConfig
    from forgeml.tokenizer.extend import extend_tokenizer
    from forgeml.tokenizer.train import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("mmsuite")
    corpus = [f"transcribe the page: work order {i} {w} pump tank" for i, w in enumerate(WORDS)]
    base = train_bpe_tokenizer(corpus * 20, vocab_size=300, out_dir=root / "base")
    ids = extend_tokenizer(base, ["<|image|>", "<|audio|>"], root / "mmtok")
    lm = dict(arch="dense", dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48,
              vocab_size=max(ids.values()) + 1, max_seq_len=192)  # fmt: skip
    cfg = MultimodalConfig(
        lm=ModelConfig(**lm),
        vision=VisionConfig(image_size=32, patch_size=8, dim=32, n_layers=1, n_heads=2,
                            ffn_hidden=48),
        audio=AudioConfig(n_mels=16, window_frames=200, dim=32, n_layers=1, n_heads=2,
                          ffn_hidden=48, stack=4),
        image_token_id=ids["<|image|>"], audio_token_id=ids["<|audio|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    save_multimodal(MultimodalLM(cfg), root / "vlm", root / "mmtok")
    save_model(build_model(ModelConfig(**lm)), root / "textlm", root / "base")
    data = root / "data"
    data.mkdir()
    answers = _write_media(data)
    (data / "suite.yaml").write_text(yaml.safe_dump(SUITE))
    return root, data, answers


class ReferenceReader:
    """A scripted vision/audio LM that answers every media prompt with its record's first
    reference (found by the media path) and the text task right."""

    media = frozenset({"image", "audio"})

    def __init__(self, answers: dict[str, str | list[str]]):
        self.answers = answers

    def generate_media(self, items, max_new_tokens):
        refs = [self.answers[(item.images or item.audio)[0]] for item in items]
        return [r[0] if isinstance(r, list) else r for r in refs]

    def generate(self, requests):
        return [" tank" for _ in requests]


def _results(ws, eval_id: str) -> dict:
    path = open_registry(ws).get_asset(eval_id).path
    return json.loads((path / "results.json").read_text())


def test_scorers_against_hand_computed_values_and_jiwer():
    # SQuAD token F1: "the red pump" -> [red, pump] vs [red, pump, valve]: P=1, R=2/3
    assert token_f1("the red pump", "red pump valve") == pytest.approx(0.8)
    # CIDEr-D, two examples, every n-gram in one example's references only (IDF = ln 2):
    # "blue tank" equals its reference: cosine 1 at n=1, 2 (no 3-, 4-grams): 10 * 2/4 = 5;
    # "red pump" vs ["red pump", "the pump"]: n=1 1 + 1/2, n=2 1 + 0 -> 10 * 2.5/4/2 = 3.125
    assert cider_d(["red pump", "blue tank"], [["red pump", "the pump"], ["blue tank"]]) == (
        pytest.approx([3.125, 5.0])
    )
    # a word in both examples' references has IDF 0 and adds nothing
    assert cider_d(["pump", "pump tank"], [["pump"], ["pump tank"]])[0] == 0.0
    # several references: exact match and F1 take the best; CER/WER the lowest
    task = TaskSpec(name="t", kind="image_qa", data=DataSpec(inline=[{}]),
                    scorers=["normalized_exact_match", "f1", "cer", "wer"])  # fmt: skip
    records = [{"id": "a", "answer": ["the pump", "red pump valve"]}]
    (ex,) = score_media_answers(task, records, [MediaPrompt("q")], ["Red pump!"]).examples
    assert ex["scores"]["normalized_exact_match"] == 0.0
    assert ex["scores"]["f1"] == pytest.approx(0.8)  # F1 2/3 against "the pump" (no articles)
    # CER: 3 of 8 characters ("the" -> "red") beats 6 deletions of 14; WER: 1 of 3 words
    # ("valve" deleted) beats 1 of 2 ("the" -> "red")
    assert ex["scores"]["cer"] == pytest.approx(3 / 8)
    assert ex["scores"]["wer"] == pytest.approx(1 / 3)
    jiwer = pytest.importorskip("jiwer", reason="jiwer not installed (optional cross-check)")
    hyp = normalize_transcript("Red pump!")
    refs = [normalize_transcript(r) for r in records[0]["answer"]]
    assert ex["scores"]["cer"] == pytest.approx(min(jiwer.cer(r, hyp) for r in refs))
    assert ex["scores"]["wer"] == pytest.approx(min(jiwer.wer(r, hyp) for r in refs))


def test_fast_edit_distance_equals_the_dynamic_programme():
    pytest.importorskip("rapidfuzz", reason="rapidfuzz not installed (edit_distance is the DP)")
    rng = np.random.default_rng(2)
    for _ in range(200):
        a, b = ("".join(rng.choice(list("ab c"), rng.integers(0, 30))) for _ in range(2))
        assert edit_distance(a, b) == python_edit_distance(a, b)
        assert edit_distance(a.split(), b.split()) == python_edit_distance(a.split(), b.split())


def test_media_kinds_default_and_media_is_fingerprinted(setup):
    _, data, _ = setup
    suite = load_suite(data / "suite.yaml")
    pages = suite.task("pages")
    assert pages.scorers == ["cer", "wer"] and pages.stop == []
    assert suite.task("captions").scorers == ["cider", "f1"]
    assert suite.task("speech").scorers[0] == "wer" and pages.data.media == ["image", "audio"]
    assert suite.task("words").data.media == []
    # a text task dumps (and hashes) as before media existed; a media task's media count
    assert "media" not in suite.task("words").data.model_dump()
    assert pages.data.model_dump()["media"] == ["image", "audio"]
    fewshot = {**SUITE["tasks"][1], "fewshot": {"k": 1}}
    with pytest.raises(ConfigError, match="answers greedily, without few-shot"):
        suite_from_dict({"name": "bad", "tasks": [fewshot]})
    before = load_examples(pages.data, suite.data_root)
    assert Path(before.records[0]["image"]).is_absolute()
    image = data / "pages" / "p0.png"
    original = image.read_bytes()
    try:
        image.write_bytes(original + b"\0")  # same JSONL, different image: a new fingerprint
        assert load_examples(pages.data, suite.data_root).fingerprint != before.fingerprint
        image.unlink()
        with pytest.raises(DataError, match="pages0: image file not found"):
            load_examples(pages.data, suite.data_root)
    finally:
        image.write_bytes(original)


def test_eval_run_api_and_cli_on_a_multimodal_folder(setup, workspace):
    root, data, _ = setup
    res = evaluate_model(workspace, str(root / "vlm"), suite=str(data / "suite.yaml"), dtype="fp32")
    reg = open_registry(workspace)
    evaluated = reg.get_asset(res.output)
    model = reg.get_asset(evaluated.metadata["model"])
    assert model.metadata["format"] == "multimodal" and model.name == "vlm"
    assert model.id in reg.get_run(evaluated.producer_run).inputs  # lineage: eval <- model
    results = _results(workspace, res.output)
    kpis = {t: info["kpis"] for t, info in results["tasks"].items()}
    assert kpis["speech"] == [{"metric": "wer", "higher_is_better": False, "tolerance": 0.0,
                               "minimum": None}]  # fmt: skip
    assert kpis["qa"][0]["metric"] == "normalized_exact_match" and kpis["qa"][0]["higher_is_better"]
    assert results["tasks"]["captions"]["primary"] == "cider"
    record = load_eval_record(reg.get_asset(res.output).path)
    for ex in record.examples["pages"]:
        assert Path(ex["media"][0]).name.startswith("p") and isinstance(ex["output"], str)
        assert ex["scores"]["cer"] >= 0 and ex["reference"].startswith("work order")
    assert len(record.examples["speech"]) == 12 and record.examples["words"][0]["output"] != ""
    assert res.metrics["pages/n"] == 12.0
    again = evaluate_model(
        workspace, str(root / "vlm"), suite=str(data / "suite.yaml"), dtype="fp32"
    )
    assert again.cached and again.output == res.output

    cli = CliRunner().invoke(
        app, ["-w", str(workspace.root), "eval", "run", str(root / "vlm"), "--suite",
              str(data / "suite.yaml"), "--dtype", "fp32", "--force"],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    assert "pages" in cli.output and "cider" in cli.output
    runs = [r for r in reg.list_runs(stage="eval-suite") if r.status == "succeeded"]
    assert len(runs) == 2  # the CLI ran it again (--force) and got the same eval, bit for bit
    assert [r.outputs for r in runs] == [[res.output], [res.output]]


def test_gate_fails_higher_error_rates_and_drift_flags_them(setup, workspace):
    root, data, answers = setup
    reg = open_registry(workspace)
    (root / "reader").mkdir(exist_ok=True)
    (root / "reader" / "weights.bin").write_text("scripted")
    reader = reg.add_asset("model", "reader", root / "reader").id
    random_vlm = evaluate_model(workspace, str(root / "vlm"), suite=str(data / "suite.yaml"))
    vlm = reg.get_asset(random_vlm.output).metadata["model"]
    lms = {reader: ReferenceReader(answers)}
    assert gate(workspace, reader, vlm, data / "suite.yaml", lms=lms).report.passed

    bad = gate(workspace, vlm, reader, data / "suite.yaml", lms=lms)
    checks = {(c.task, c.metric): c for c in bad.report.checks}
    assert not bad.report.passed
    speech, pages = checks[("speech", "wer")], checks[("pages", "cer")]
    assert not speech.higher_is_better and speech.delta > 0 and speech.ci_low > 0
    assert speech.status == "fail" and speech.reason == "significant regression"
    assert pages.status == "fail" and pages.reason == "above limit 0.5"
    assert checks[("qa", "normalized_exact_match")].status == "fail"

    # the reader's report marks its CER-0 pages as passed (lower is better)
    html = (reg.get_asset(bad.baseline_eval).path / "report.html").read_text()
    section = html.split("pages: per-example")[1].split("</details>")[0]
    assert section.count('<tr class="pass">') == 12 and 'class="fail"' not in section
    records = {e: load_eval_record(reg.get_asset(e).path) for e in (bad.baseline_eval,
                                                                   bad.candidate_eval)}  # fmt: skip
    th = DriftThresholds(min_examples=10)
    same = eval_drift_report(records[bad.candidate_eval], records[bad.candidate_eval], "pages",
                             thresholds=th)  # fmt: skip
    assert not same.drifted
    moved = eval_drift_report(records[bad.baseline_eval], records[bad.candidate_eval], "pages",
                              thresholds=th)  # fmt: skip
    flagged = {c.name for c in moved.checks if c.flagged}
    assert "pages cer" in flagged and moved.drifted
    check = next(c for c in moved.checks if c.name == "pages cer")
    assert check.reference == 0.0 and check.current > 0.5
    for ref, code in ((bad.candidate_eval, 0), (bad.baseline_eval, 1)):  # exit 1 on drift
        cli = CliRunner().invoke(
            app, ["-w", str(workspace.root), "eval", "drift", ref, bad.candidate_eval,
                  "--task", "pages", "--min-examples", "10"],
        )  # fmt: skip
        assert cli.exit_code == code, cli.output
        assert ("DRIFT" in cli.output) == bool(code) and "pages cer" in cli.output


def test_text_only_model_gets_one_clear_line(setup, workspace):
    root, data, _ = setup
    res = subprocess.run(
        [sys.executable, "-m", "forgeml.cli", "-w", str(workspace.root), "-q", "eval", "run",
         str(root / "textlm"), "--suite", str(data / "suite.yaml")],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "task qa (image_qa) gives image but model" in res.stderr
    assert "is text-only" in res.stderr
    # a scripted text model through the Python API: the same error, before any generation
    with pytest.raises(ForgeError, match="gives audio but model ScriptedText is text-only"):
        task = load_suite(data / "suite.yaml").task("speech")
        examples = load_examples(task.data, data)
        run_media_kind(type("ScriptedText", (), {})(), task, examples.records)
