"""Kubernetes manifests for a multi-node training job (`forgeml launch k8s`).

Either a Kubeflow training-operator PyTorchJob (kubeflow.org/v1: one Master and N-1 Workers,
the operator injects MASTER_ADDR and RANK) or, where no operator is installed, an indexed
batch/v1 Job whose pods find the first one through a headless Service. The recipe travels in
a ConfigMap; the workspace (registry, shards, checkpoints) is a shared PersistentVolumeClaim,
so a pod restarted after a failure resumes from the last checkpoint.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml

from forgeml.core.errors import ConfigError
from forgeml.launch.cluster import ClusterJob, node_command
from forgeml.launch.torchrun import torchrun_env

Kind = Literal["pytorchjob", "indexed-job"]
KINDS: tuple[str, ...] = ("pytorchjob", "indexed-job")
WORKSPACE_MOUNT = "/workspace"
RECIPE_MOUNT = "/etc/forgeml"
# The training operator injects env and the rendezvous port into the container of this name.
CONTAINER = "pytorch"


def _labels(job: ClusterJob) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "forgeml",
        "app.kubernetes.io/component": "trainer",
        "forgeml.dev/job": job.name,
    }


def _pod_template(
    job: ClusterJob, *, image: str, pvc: str, script: str, subdomain: str | None = None
) -> dict[str, Any]:
    gpus = str(job.gpus_per_node)
    spec: dict[str, Any] = {
        "restartPolicy": "OnFailure",
        "containers": [
            {
                "name": CONTAINER,
                "image": image,
                "command": ["/bin/bash", "-c", script],
                "env": [{"name": "FORGEML_WORKSPACE", "value": WORKSPACE_MOUNT}]
                # several nodes: each rendezvous round meets in a fresh store, so an elastic
                # restart reads no stale keys (forgeml.launch.torchrun.torchrun_env)
                + [{"name": k, "value": v} for k, v in torchrun_env(job.nodes).items()],
                "ports": [{"name": "pytorchjob-port", "containerPort": job.rdzv_port}],
                "resources": {"limits": {"nvidia.com/gpu": gpus}},
                "volumeMounts": [
                    {"name": "workspace", "mountPath": WORKSPACE_MOUNT},
                    {"name": "recipe", "mountPath": RECIPE_MOUNT, "readOnly": True},
                    # NCCL and the data loader share memory through /dev/shm (64 MiB by default)
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
        "volumes": [
            {"name": "workspace", "persistentVolumeClaim": {"claimName": pvc}},
            {"name": "recipe", "configMap": {"name": f"{job.name}-recipe"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if subdomain:
        spec["subdomain"] = subdomain
    return {"metadata": {"labels": _labels(job)}, "spec": spec}


def _k8s_object(
    api_version: str, kind: str, name: str, job: ClusterJob, **body: Any
) -> dict[str, Any]:
    """One object of the job's manifests: API version, kind, name and the job's labels, then
    `body` (its spec, or a ConfigMap's data) in the order given."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "labels": _labels(job)},
        **body,
    }


def _recipe_config_map(job: ClusterJob, recipe_text: str) -> dict[str, Any]:
    return _k8s_object(
        "v1", "ConfigMap", f"{job.name}-recipe", job, data={"recipe.yaml": recipe_text}
    )


def _pytorchjob(job: ClusterJob, *, image: str, pvc: str) -> dict[str, Any]:
    # The operator sets RANK (the replica's index: Master 0, Workers 1..N-1) and WORLD_SIZE to
    # node numbers; torchrun sets them per process, so they are read once and cleared.
    script = (
        'node_rank="$RANK"; head="$MASTER_ADDR"; unset RANK WORLD_SIZE MASTER_ADDR MASTER_PORT; '
        "exec " + node_command(job, rdzv_host="$head", node_rank="$node_rank", rdzv_id=job.name)
    )
    template = _pod_template(job, image=image, pvc=pvc, script=script)
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if job.nodes > 1:
        replicas["Worker"] = {
            "replicas": job.nodes - 1, "restartPolicy": "OnFailure", "template": template,
        }  # fmt: skip
    spec = {
        "nprocPerNode": str(job.gpus_per_node),
        "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": job.max_restarts * job.nodes},
        "pytorchReplicaSpecs": replicas,
    }
    return _k8s_object("kubeflow.org/v1", "PyTorchJob", job.name, job, spec=spec)


def _indexed_job(job: ClusterJob, *, image: str, pvc: str) -> list[dict[str, Any]]:
    # Pod i of an indexed Job is named NAME-i; with `subdomain` set to a headless Service of
    # the same name, NAME-0.NAME resolves to the first pod, which hosts the c10d rendezvous.
    script = "exec " + node_command(
        job,
        rdzv_host=f"{job.name}-0.{job.name}",
        node_rank="$JOB_COMPLETION_INDEX",
        rdzv_id=job.name,
    )
    service_spec = {
        "clusterIP": "None",
        "selector": {"forgeml.dev/job": job.name},
        # the rendezvous runs before any readiness probe could pass
        "publishNotReadyAddresses": True,
        "ports": [{"name": "c10d", "port": job.rdzv_port, "targetPort": job.rdzv_port}],
    }
    job_spec = {
        "completionMode": "Indexed",
        "completions": job.nodes,
        "parallelism": job.nodes,
        "backoffLimit": job.max_restarts * job.nodes,
        "template": _pod_template(job, image=image, pvc=pvc, script=script, subdomain=job.name),
    }
    return [
        _k8s_object("v1", "Service", job.name, job, spec=service_spec),
        _k8s_object("batch/v1", "Job", job.name, job, spec=job_spec),
    ]


def check_options(*, kind: str, image: str) -> None:
    """Refuse an unknown `kind` or a missing `image` (before any recipe work)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown --kind {kind!r}", hint=f"use one of: {', '.join(KINDS)}")
    if not image:
        raise ConfigError("--image is required", hint="a container image with forgeml installed")


def k8s_manifests(
    job: ClusterJob,
    *,
    image: str,
    recipe_text: str,
    pvc: str = "forgeml-workspace",
    kind: Kind = "pytorchjob",
) -> list[dict[str, Any]]:
    """The objects to `kubectl apply`: the recipe's ConfigMap, then a PyTorchJob, or a headless
    Service and an indexed Job. `job.recipe` should be under RECIPE_MOUNT and `job.workspace`
    WORKSPACE_MOUNT (where the ConfigMap and the claim `pvc` are mounted)."""
    check_options(kind=kind, image=image)
    objects = [_recipe_config_map(job, recipe_text)]
    if kind == "pytorchjob":
        return [*objects, _pytorchjob(job, image=image, pvc=pvc)]
    return [*objects, *_indexed_job(job, image=image, pvc=pvc)]


class _ManifestDumper(yaml.SafeDumper):
    """Plain YAML as people write manifests: no anchors for repeated pod templates, and text
    with newlines (the recipe) as a literal block."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def render_manifests(objects: list[dict[str, Any]]) -> str:
    """One YAML stream, `---` between objects, keys in the order written."""
    return "---\n".join(
        yaml.dump(o, Dumper=_ManifestDumper, sort_keys=False, width=1000) for o in objects
    )
