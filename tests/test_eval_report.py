"""HTML reports: content checks on the markup, and a headless Chromium screenshot that
must show the KPI bars and training curve (skipped, with the reason, without Chromium)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from forgeml.eval.gate import compare_evals, load_eval_record
from forgeml.eval.report import (
    PALETTE,
    comparison_report_html,
    eval_report_html,
    read_training_curve,
    svg_bar_chart,
    write_report,
)
from forgeml.eval.suite import suite_from_dict
from forgeml.pipeline.eval_suite_stage import eval_suite_stage
from forgeml.registry import open_registry

QA = [{"id": f"q{i}", "question": f"q{i}", "answer": f"q{i}"} for i in range(20)]


class ScriptedLM:
    def __init__(self, n_right: int):
        self.n_right = n_right

    def generate(self, requests):
        return [r.prompt if int(r.prompt[1:]) < self.n_right else "<b>bad</b>" for r in requests]

    def loglikelihood(self, requests):
        return [(-len(c), False) for _, c in requests]

    def rolling_nll(self, texts):
        return [(len(t) * 0.7, len(t)) for t in texts]


SUITE = suite_from_dict(
    {
        "name": "kpis",
        "tasks": [
            {"name": "qa", "kind": "generate", "data": {"inline": QA}, "prompt": "{question}"},
            {
                "name": "mc",
                "kind": "multiple_choice",
                "data": {"inline": [{"q": "x", "choices": ["ab", "abc"], "answer": 0}]},
                "prompt": "{q}",
            },
            {"name": "ppl", "kind": "perplexity", "data": {"inline": [{"text": "hello world"}]}},
        ],
    }
)


@pytest.fixture
def records(workspace, tmp_path):
    reg = open_registry(workspace)
    out = []
    for name, right in (("champion", 15), ("candidate", 18)):
        d = tmp_path / name
        d.mkdir()
        (d / "w.bin").write_text(name)
        model = reg.add_asset("model", name, d)
        res = eval_suite_stage(workspace, model.id, SUITE, lm=ScriptedLM(right))
        out.append(load_eval_record(reg.get_asset(res.output).path))
    return out


def metrics_jsonl(path: Path, scale: float) -> Path:
    path.write_text(
        "".join(
            json.dumps({"step": s, "loss": scale * (4 / (1 + s / 20)), "lr": 1e-3}) + "\n"
            for s in range(0, 200, 10)
        )
        + '{"step": 20'
    )  # a killed run's partial last line
    return path


def test_eval_report_holds_metrics_and_escaped_examples(records):
    html = eval_report_html(records[0])
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "0.7500" in html  # 15 of 20 exact matches
    assert "&lt;b&gt;bad&lt;/b&gt;" in html and "<b>bad</b>" not in html
    assert html.count("<svg") == 1 and "<details>" in html


def test_comparison_report_has_gate_and_curves(records, tmp_path):
    curves = {
        "champion": read_training_curve(metrics_jsonl(tmp_path / "a.jsonl", 1.0)),
        "candidate": read_training_curve(metrics_jsonl(tmp_path / "b.jsonl", 0.8)),
    }
    assert len(curves["champion"]["loss"]) == 20
    gate = compare_evals(records[1], records[0])
    html = comparison_report_html(
        records, labels=["champion", "candidate"], curves=curves, gate=gate
    )
    assert "Regression gate: PASS" in html and "0.9000" in html and "0.7500" in html
    assert "<polyline" in html and html.count("<svg") == 2
    bars = svg_bar_chart(["a"], {"m1": [0.5], "m2": [1.0]})
    assert bars.count("<rect") == 2 and 'width="390.0"' in bars  # the larger bar is full width


def decode_png(data: bytes) -> np.ndarray:
    """8-bit RGB/RGBA non-interlaced PNG -> [H, W, C] (the form Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), np.int32)
    prev = np.zeros(width * channels, np.int32)
    for y in range(height):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        cur = np.zeros_like(line)
        for x in range(len(line)):
            a = cur[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if f == 0:
                pred = 0
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (line[x] + pred) & 0xFF
        out[y], prev = cur, cur
    return out.reshape(height, width, channels)[..., :3]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    chromium() is None, reason="Chromium not installed (apt-get install -y chromium)"
)
def test_report_renders_in_headless_chromium(records, tmp_path):
    curves = {"champion": read_training_curve(metrics_jsonl(tmp_path / "a.jsonl", 1.0))}
    page = write_report(
        tmp_path / "report.html",
        comparison_report_html(records, curves=curves, gate=compare_evals(records[1], records[0])),
    )
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
    ]
    subprocess.run(
        [chromium(), *flags, f"--screenshot={shot}", "--window-size=480,900", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [chromium(), *flags, "--dump-dom", page.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "<svg" in dom and "Regression gate: PASS" in dom
    pixels = decode_png(shot.read_bytes())
    assert pixels.shape[:2] == (900, 480)
    white = (pixels == 255).all(-1).mean()
    assert 0.3 < white < 0.99, "page is blank or not rendered"
    blue = np.array([int(PALETTE[0][i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(pixels - blue).sum(-1) < 30).sum() > 200, "no KPI bars drawn"
