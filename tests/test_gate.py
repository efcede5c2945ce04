"""Regression gate, promotion and rollback: a planted regression fails the gate and blocks
promotion; forcing needs a reason and is audited (from the CLI too); rollback restores the
previous model; lineage walks from an alias to the documents that trained its model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from forgeml.cli import app
from forgeml.core.errors import ForgeError
from forgeml.eval.gate import check_kpi
from forgeml.eval.suite import suite_from_dict
from forgeml.pipeline.eval_suite_stage import GateFailed, gate, promote, rollback
from forgeml.registry import open_registry

N = 80
QA = [{"id": f"q{i}", "question": f"q{i}", "answer": str(i)} for i in range(N)]
DOCS = [{"id": f"d{i}", "text": f"document {i} " * 5} for i in range(30)]


class ScriptedLM:
    """Answers the first `n_right` questions right; document NLL scaled by `nll_scale`."""

    def __init__(self, n_right: int, nll_scale: float = 1.0):
        self.n_right, self.nll_scale = n_right, nll_scale

    def generate(self, requests):
        return [r.prompt if int(r.prompt[1:]) < self.n_right else "?" for r in requests]

    def loglikelihood(self, requests):
        raise AssertionError("not used")

    def rolling_nll(self, texts):
        return [
            (self.nll_scale * len(t) * (1 + 0.1 * (i % 3)), len(t)) for i, t in enumerate(texts)
        ]


SUITE = suite_from_dict(
    {
        "name": "kpis",
        "tasks": [
            {
                "name": "qa",
                "kind": "generate",
                "data": {"inline": QA},
                "prompt": "{question}",
                "target": "{question}",
                "kpis": [{"metric": "exact_match", "tolerance": 0.02}],
            },
            {"name": "ppl", "kind": "perplexity", "data": {"inline": DOCS}},
        ],
    }
)


@pytest.fixture
def models(workspace, tmp_path):
    reg = open_registry(workspace)
    ids = {}
    for name in ("champ", "worse", "better", "noisy", "fat"):
        d = tmp_path / name
        d.mkdir()
        (d / "weights.bin").write_text(name)
        ids[name] = reg.add_asset("model", name, d).id
    lms = {
        ids["champ"]: ScriptedLM(70),
        ids["worse"]: ScriptedLM(40),
        ids["better"]: ScriptedLM(74),
        ids["noisy"]: ScriptedLM(68),
        ids["fat"]: ScriptedLM(70, nll_scale=1.3),
    }
    return ids, lms


def test_kpi_check_directions_and_minimum():
    base = [{"id": str(i), "scores": {"m": float(i % 2)}} for i in range(100)]
    worse = [{"id": str(i), "scores": {"m": float(i % 4 == 0)}} for i in range(100)]
    assert check_kpi("t", {"metric": "m"}, worse, base).status == "fail"
    assert check_kpi("t", {"metric": "m"}, base, worse).status == "pass"
    # lower is better: the same numbers flip
    assert check_kpi("t", {"metric": "m", "higher_is_better": False}, base, worse).status == "fail"
    floor = check_kpi("t", {"metric": "m", "minimum": 0.6}, base, base)
    assert floor.status == "fail" and "below" in floor.reason
    unpaired = check_kpi("t", {"metric": "m"}, worse[:50], base)
    assert not unpaired.paired and unpaired.status == "fail"


def test_gate_fails_on_planted_regression_and_passes_otherwise(workspace, models):
    ids, lms = models
    open_registry(workspace).set_alias("champion", ids["champ"])
    bad = gate(workspace, ids["worse"], "champion", SUITE, lms=lms).report
    assert not bad.passed
    qa = next(c for c in bad.checks if c.task == "qa")
    assert qa.status == "fail" and qa.paired and qa.delta == pytest.approx(-30 / N)
    assert qa.ci_high < 0
    assert "FAIL" in bad.table() and "qa" in bad.table()
    good = gate(workspace, ids["better"], "champion", SUITE, lms=lms).report
    assert good.passed and all(c.status == "pass" for c in good.checks)
    # 2 fewer right out of 80: worse than the tolerance but not significant -> warn
    noisy = gate(workspace, ids["noisy"], "champion", SUITE, lms=lms)
    assert noisy.report.passed and {c.status for c in noisy.report.checks} == {"warn", "pass"}
    assert not gate(workspace, ids["noisy"], "champion", SUITE, lms=lms, strict=True).report.passed
    fat = gate(workspace, ids["fat"], "champion", SUITE, lms=lms).report
    ppl = next(c for c in fat.checks if c.task == "ppl")
    assert ppl.metric == "bits_per_byte" and not ppl.higher_is_better and ppl.status == "fail"


def test_promote_gated_forced_and_rollback_round_trip(workspace, models):
    ids, lms = models
    reg = open_registry(workspace)
    first = promote(workspace, ids["champ"], "champion", suite_path=SUITE, lms=lms)
    assert first.gate is None and reg.resolve_alias("champion") == ids["champ"]
    with pytest.raises(GateFailed, match="qa/exact_match") as exc:
        promote(workspace, ids["worse"], "champion", suite_path=SUITE, lms=lms)
    assert not exc.value.report.passed
    assert reg.resolve_alias("champion") == ids["champ"]
    with pytest.raises(ForgeError, match="needs a gate"):
        promote(workspace, ids["worse"], "champion")
    with pytest.raises(ForgeError, match="reason"):
        promote(workspace, ids["worse"], "champion", suite_path=SUITE, force=True, lms=lms)
    forced = promote(
        workspace,
        ids["worse"],
        "champion",
        suite_path=SUITE,
        force=True,
        reason="hotfix for incident 42",
        actor="alice",
        lms=lms,
    )
    assert forced.forced and reg.resolve_alias("champion") == ids["worse"]
    last = reg.alias_history("champion")[-1]
    assert last["actor"] == "alice" and last["reason"].startswith("FORCED: hotfix for incident 42")
    assert "gate failed" in last["reason"]
    assert rollback(workspace, "champion", reason="bad numbers") == ids["champ"]
    assert reg.resolve_alias("champion") == ids["champ"]
    ok = promote(workspace, ids["better"], "champion", suite_path=SUITE, lms=lms)
    assert ok.gate.report.passed and reg.resolve_alias("champion") == ids["better"]
    assert "gate passed" in reg.alias_history("champion")[-1]["reason"]
    assert [e["action"] for e in reg.alias_history("champion")] == ["set", "set", "rollback", "set"]
    assert rollback(workspace, "champion") == ids["champ"]


def test_cli_promotions_are_audited_forced_ones_with_their_reason(workspace, models):
    from forgeml.governance.audit import audit_log_path, verify_audit_log

    ids, _ = models
    runner, w = CliRunner(), ["-w", str(workspace.root)]
    first = runner.invoke(app, [*w, "promote", ids["champ"], "--alias", "champion"])
    assert first.exit_code == 0, first.output
    ungated = runner.invoke(app, [*w, "promote", ids["worse"], "--alias", "champion"])
    assert isinstance(ungated.exception, ForgeError)  # needs a gate; nothing moved
    forced = runner.invoke(
        app, [*w, "promote", ids["worse"], "-a", "champion", "--force", "--reason", "incident 42"]
    )
    assert forced.exit_code == 0 and "(forced)" in forced.output, forced.output
    back = runner.invoke(app, [*w, "rollback", "champion", "--reason", "bad numbers"])
    assert back.exit_code == 0, back.output

    log = audit_log_path(workspace.root)
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    moves = [e for e in entries if e["event"] in ("alias_promoted", "alias_rolled_back")]
    assert [(e["event"], e["asset_id"], e.get("forced")) for e in moves] == [
        ("alias_promoted", ids["champ"], False),
        ("alias_promoted", ids["worse"], True),
        ("alias_rolled_back", ids["champ"], None),
    ]
    assert moves[1]["reason"] == "incident 42" and moves[1]["previous"] == ids["champ"]
    assert moves[1]["alias"] == "champion" and moves[1]["principal"].startswith("cli:")
    # the alias history names the same actor the audit log does
    history = open_registry(workspace).alias_history("champion")
    assert history[1]["actor"] == moves[1]["principal"]
    assert history[1]["reason"] == "FORCED: incident 42"
    assert verify_audit_log(log).ok
    assert runner.invoke(app, [*w, "audit", "verify"]).exit_code == 0


def test_cli_lineage_walks_from_an_alias_to_its_documents(workspace, text_folder):
    from test_pipeline import tiny_recipe

    from forgeml.pipeline.run import run_pipeline

    recipe = tiny_recipe(text_folder, train={"max_steps": 2, "log_every": 1})
    res = run_pipeline(workspace, recipe, progress=False)
    model, docs = res.stage("pretrain").output, res.stage("ingest").output
    assert open_registry(workspace).get_asset(docs).metadata["format"] == "documents-parquet"
    runner, w = CliRunner(), ["-w", str(workspace.root)]
    assert runner.invoke(app, [*w, "promote", model, "--alias", "champion"]).exit_code == 0
    walk = runner.invoke(app, [*w, "assets", "lineage", "champion", "--up"])
    assert walk.exit_code == 0, walk.output
    lines = walk.output.splitlines()
    assert lines[0].startswith(f"{model}  [model]")  # the walk starts at the alias's model
    found = [line for line in lines if line.strip().startswith(docs)]
    assert found and "[dataset]" in found[0], walk.output
    # not a direct parent: reached through the pretrain run and the token shards it read
    assert len(found[0]) - len(found[0].lstrip()) >= 3 * 2, walk.output
    assert any("(pretrain, succeeded)" in line for line in lines[1:2]), walk.output
