"""`forgeml launch k8s`: the manifests match their golden files, and every object validates
against the Kubernetes schema as the official client's models hold it (unknown or misspelt
fields, wrong types and missing required fields are refused), the PyTorchJob against the
Kubeflow training operator's kubeflow.org/v1 schema."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from forgeml.launch.cluster import ClusterJob
from forgeml.launch.k8s import k8s_manifests, render_manifests

k8s = pytest.importorskip("kubernetes.client", reason="the kubernetes client (dev extra)")

GOLDEN = Path(__file__).parent / "golden" / "launch"
ROOT = Path(__file__).resolve().parents[1]
RECIPE_TEXT = "name: tiny\nmodel: {dim: 64, n_layers: 2}\ntrain: {strategy: fsdp}\n"


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/launch/NAME; FORGEML_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("FORGEML_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with FORGEML_UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text(), f"{name} differs from its golden file (see git diff after "
    "FORGEML_UPDATE_GOLDEN=1 if the change is intended)"


# The kubeflow.org/v1 PyTorchJob schema, transcribed from the training operator's OpenAPI
# definitions (kubeflow/training-operator, hack/python-sdk/swagger.json, v1.9), with the pod
# template and metadata checked by the Kubernetes client's own models.
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)


class ReplicaSpec(_Strict):
    replicas: int | None = None
    restartPolicy: Literal["Always", "OnFailure", "Never", "ExitCode"] | None = None
    template: dict[str, Any]


class RunPolicy(_Strict):
    cleanPodPolicy: Literal["All", "Running", "None"] | None = None
    ttlSecondsAfterFinished: int | None = None
    activeDeadlineSeconds: int | None = None
    backoffLimit: int | None = None
    schedulingPolicy: dict[str, Any] | None = None
    suspend: bool | None = None
    managedBy: str | None = None


class ElasticPolicy(_Strict):
    minReplicas: int | None = None
    maxReplicas: int | None = None
    rdzvBackend: str | None = None
    rdzvPort: int | None = None
    rdzvHost: str | None = None
    rdzvId: str | None = None
    rdzvConf: list[dict[str, str]] | None = None
    standalone: bool | None = None
    nProcPerNode: int | None = None
    maxRestarts: int | None = None
    metrics: list[dict[str, Any]] | None = None


class PyTorchJobSpec(_Strict):
    runPolicy: RunPolicy
    pytorchReplicaSpecs: dict[Literal["Master", "Worker"], ReplicaSpec]
    elasticPolicy: ElasticPolicy | None = None
    nprocPerNode: str | None = None


class PyTorchJob(_Strict):
    apiVersion: Literal["kubeflow.org/v1"]
    kind: Literal["PyTorchJob"]
    metadata: dict[str, Any]
    spec: PyTorchJobSpec


def validate_k8s(obj: dict[str, Any], model: type) -> Any:
    """Validate with the client's (strict, extra-forbidding) pydantic model, then require the
    object to survive a round trip unchanged: a field written in the client's snake_case, or
    anything the model would drop, fails too (the API server takes camelCase only)."""
    parsed = model.model_validate(obj)
    assert parsed.model_dump(by_alias=True, exclude_none=True, mode="json") == obj
    return parsed


def validate_manifest(objects: list[dict[str, Any]]) -> None:
    models = {
        ("v1", "ConfigMap"): k8s.V1ConfigMap,
        ("v1", "Service"): k8s.V1Service,
        ("batch/v1", "Job"): k8s.V1Job,
    }
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key == ("kubeflow.org/v1", "PyTorchJob"):
            job = PyTorchJob.model_validate(obj)
            validate_k8s(obj["metadata"], k8s.V1ObjectMeta)
            for replica in job.spec.pytorchReplicaSpecs.values():
                validate_k8s(replica.template, k8s.V1PodTemplateSpec)
        else:
            validate_k8s(obj, models[key])


def job(nodes: int = 2) -> ClusterJob:
    return ClusterJob(
        name="scale-7b", recipe="/etc/forgeml/recipe.yaml", nodes=nodes, gpus_per_node=8,
        workspace="/workspace", data="corpus-v1", max_restarts=2,
    )  # fmt: skip


def manifests(kind: str, nodes: int = 2) -> list[dict[str, Any]]:
    return k8s_manifests(
        job(nodes), image="registry.local/forgeml:0.1", recipe_text=RECIPE_TEXT,
        pvc="shared-ws", kind=kind,  # type: ignore[arg-type]
    )  # fmt: skip


def _script(pod_template: dict[str, Any]) -> str:
    (container,) = pod_template["spec"]["containers"]
    assert container["command"][:2] == ["/bin/bash", "-c"]
    return container["command"][2]


def _node_argv(script: str, env: dict[str, str]) -> list[str]:
    """The forgeml argv a pod runs, with the shell variables it reads filled in."""
    tail = script.split("exec ", 1)[1]
    for name, value in env.items():
        tail = tail.replace(f"${name}", value)
    return shlex.split(tail)


def test_pytorchjob_matches_golden_and_validates() -> None:
    objects = manifests("pytorchjob")
    check_golden("pytorchjob-2x8.yaml", render_manifests(objects))
    validate_manifest(objects)
    config_map, pytorchjob = objects
    assert config_map["data"]["recipe.yaml"] == RECIPE_TEXT
    replicas = pytorchjob["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    pod = replicas["Master"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "pytorch"  # the operator injects its env into this container
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
              if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims == ["shared-ws"]
    argv = _node_argv(_script(pod), {"head": "scale-7b-master-0", "node_rank": "1"})
    assert argv[:3] == ["forgeml", "train", "pretrain"]
    assert {"name": "FORGEML_WORKSPACE", "value": "/workspace"} in container["env"]
    assert "--rdzv-endpoint" in argv and "scale-7b-master-0:29500" in argv


def test_indexed_job_matches_golden_and_validates() -> None:
    objects = manifests("indexed-job", nodes=4)
    check_golden("indexed-job-4x8.yaml", render_manifests(objects))
    validate_manifest(objects)
    _, service, batch_job = objects
    spec = batch_job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    pod = spec["template"]
    # the headless Service selects the job's pods and names them: NAME-0.NAME is the first
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["subdomain"] == service["metadata"]["name"] == "scale-7b"
    argv = _node_argv(_script(pod), {"JOB_COMPLETION_INDEX": "3"})
    assert argv[argv.index("--rdzv-endpoint") + 1] == "scale-7b-0.scale-7b:29500"
    assert argv[argv.index("--node-rank") + 1] == "3"
    assert argv[argv.index("--nnodes") + 1] == "4"


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("spec", "template", "spec", "restartPolicy"), "restartpolicy"),  # misspelt key
        (
            ("spec", "template", "spec", "containers", 0, "volumeMounts", 0, "mountPath"),
            "mount_path",
        ),
        (("spec", "completions"), "completion"),
    ],
)
def test_a_misspelt_field_fails_validation(path: tuple, bad: str) -> None:
    objects = manifests("indexed-job")
    node = objects[2]
    for part in path[:-1]:
        node = node[part]
    node[bad] = node.pop(path[-1])
    with pytest.raises((ValidationError, AssertionError)):
        validate_manifest(objects)


def test_wrong_types_and_missing_fields_fail_validation() -> None:
    objects = manifests("pytorchjob")
    container = objects[1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"
    ][0]
    container["ports"][0]["containerPort"] = "29500"  # a string where the API wants an int
    with pytest.raises(ValidationError):
        validate_manifest(objects)
    objects = manifests("pytorchjob")
    objects[1]["spec"]["pytorchReplicaSpecs"]["Chief"] = objects[1]["spec"][
        "pytorchReplicaSpecs"
    ].pop("Worker")  # not a PyTorchJob replica type
    with pytest.raises(ValidationError):
        validate_manifest(objects)
    objects = manifests("indexed-job")
    del objects[2]["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValidationError):
        validate_manifest(objects)


def test_node_command_parses_as_the_train_pretrain_cli() -> None:
    """The flags every pod passes exist on `forgeml train pretrain` (parsed by its own Click
    command, nothing run)."""
    import typer

    from forgeml.cli import app

    pod = manifests("indexed-job")[2]["spec"]["template"]
    argv = _node_argv(_script(pod), {"JOB_COMPLETION_INDEX": "1"})
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("forgeml", argv[1:])
    while hasattr(cmd, "resolve_command"):  # the groups: forgeml -> train -> pretrain
        # a group keeps the sub-command's name and arguments for its sub-command to parse
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, cmd, args = cmd.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, args, parent=ctx)
    params = ctx.params
    assert params["auto_resume"] is True
    assert str(params["recipe"]) == "/etc/forgeml/recipe.yaml"


def test_cli_writes_validated_manifests(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from forgeml.cli import app

    out = tmp_path / "job.yaml"
    recipe = ROOT / "recipes" / "scale" / "mistral-7b.yaml"
    result = CliRunner().invoke(app, [
        "launch", "k8s", str(recipe), "--nodes", "2", "--gpus-per-node", "8",
        "--image", "forgeml:dev", "--kind", "indexed-job", "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(out.read_text()))
    validate_manifest(objects)
    assert objects[0]["data"]["recipe.yaml"] == recipe.read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "forgeml.cli", "launch", "k8s", str(recipe), "--image", "x",
         "--kind", "job"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown --kind 'job'" in bad.stderr
