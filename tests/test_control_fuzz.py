"""Property-based fuzzing of the REST control plane from its own OpenAPI schema
(schemathesis 4 strategies, run by hypothesis): valid and invalid requests from an agent and
an admin key. No request may get a 5xx, and every request gets exactly one audit entry."""

from __future__ import annotations

import json

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from forgeml.control.api import create_control_app  # noqa: E402
from forgeml.control.budgets import set_budget  # noqa: E402
from forgeml.control.ops import ControlPlane  # noqa: E402
from forgeml.governance.audit import audit_log_path, verify_audit_log  # noqa: E402
from forgeml.governance.keys import create_api_key  # noqa: E402

CASES = 300


def _audited_requests(root) -> int:
    lines = audit_log_path(root).read_text().split("\n")
    return sum(json.loads(line)["event"] == "control_request" for line in lines if line)


def test_fuzzed_requests_never_get_a_5xx_and_are_all_audited(workspace, tmp_path) -> None:
    control = ControlPlane(workspace)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "w").write_text("1")
    control.reg.add_asset("model", "m1", model_dir)
    keys = [
        create_api_key(workspace.root, "bot", roles=["agent", "aliases:write", "exports:write",
                                                     "assets:delete"])[0],
        create_api_key(workspace.root, "op", roles=["admin"])[0],
    ]  # fmt: skip
    set_budget(control.reg, "bot", cpu_hours=1.0, max_concurrent_jobs=2)
    app = create_control_app(control)
    auth = {"Authorization": f"Bearer {keys[1]}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=auth)
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    cases = st.one_of([schema.as_strategy(generation_mode=m) for m in modes])
    seen: list[tuple[str, str, int]] = []
    before = _audited_requests(workspace.root)

    @settings(
        max_examples=CASES, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(case=cases, key=st.sampled_from(keys))
    def fuzz(case, key) -> None:
        r = case.call(headers={"Authorization": f"Bearer {key}"})
        seen.append((case.method, case.path, r.status_code))
        assert r.status_code < 500, (case.method, case.formatted_path, case.body, r.text[:500])

    fuzz()
    control.close()
    assert len(seen) >= CASES * 0.9
    assert len({(m, p) for m, p, _ in seen}) >= 15  # most operations were reached
    assert _audited_requests(workspace.root) - before == len(seen)
    assert verify_audit_log(audit_log_path(workspace.root)).ok  # odd paths and bodies included
