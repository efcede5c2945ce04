"""Human approval of sensitive control-plane actions.

An agent asking to move a production alias, to delete an asset or to export a model outside
the workspace gets a pending approval instead of the action; a human principal holding the
`approver` (or `admin`) role runs `forgeml approvals approve ID` (or `deny`), and only then is
the action executed, as the requester, with the approver recorded. Every step goes to the
hash-chained audit log.

At the CLI the approver proves who they are with their own API key (a file, or
$FORGEML_API_KEY), checked against the keys table as over REST: `approver_from_key`. Lowering
an asset's classification label is such an action too (`change_label`).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.core.workspace import Workspace
from forgeml.governance.audit import AuditLog
from forgeml.governance.keys import ADMIN_ROLE, KeyStore
from forgeml.governance.labels import LEVELS, is_downgrade, set_label
from forgeml.registry import Registry
from forgeml.registry.schema import approvals

PENDING, EXECUTED, FAILED, DENIED = "pending", "executed", "failed", "denied"
# Aliases that serve production traffic: moving one is a sensitive action.
PRODUCTION_ALIASES = frozenset({"champion", "production", "prod"})
APPROVER_ROLE = "approver"
DECIDING_ROLES = frozenset({APPROVER_ROLE, ADMIN_ROLE})
AGENT_ROLE = "agent"
KEY_ENV = "FORGEML_API_KEY"


@dataclass(frozen=True)
class Approval:
    id: str
    action: str
    params: dict[str, Any]
    requested_by: str
    reason: str
    status: str
    created_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    result: dict[str, Any] | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _promote(ws: Workspace, p: dict[str, Any], actor: str) -> dict[str, Any]:
    from forgeml.pipeline.eval_suite_stage import promote

    res = promote(
        ws, p["model"], p["alias"], suite_path=p.get("suite"), data_root=p.get("data_root"),
        force=bool(p.get("force")), reason=p.get("reason", ""), actor=actor,
    )  # fmt: skip
    return {"alias": res.alias, "asset_id": res.asset_id, "previous": res.previous}


def _export(ws: Workspace, p: dict[str, Any], actor: str) -> dict[str, Any]:
    from forgeml.pipeline.interop import export_model

    return {"path": str(export_model(ws, p["model"], Path(p["out"])))}


def _delete(ws: Workspace, p: dict[str, Any], actor: str) -> dict[str, Any]:
    from forgeml.registry import open_registry

    gone = open_registry(ws).delete_asset(p["asset"], actor=actor, reason=p.get("reason", ""))
    return {"asset": gone.id, "kind": gone.kind, "name": gone.name, "sha256": gone.sha256}


def _label(ws: Workspace, p: dict[str, Any], actor: str) -> dict[str, Any]:
    from forgeml.registry import open_registry

    change = set_label(open_registry(ws), p["asset"], p["label"], allow_downgrade=True)
    return asdict(change)


# What an approved action runs: (workspace, params, actor) -> JSON-able result.
EXECUTORS: dict[str, Callable[[Workspace, dict[str, Any], str], dict[str, Any]]] = {
    "promote": _promote,
    "export": _export,
    "delete": _delete,
    "label": _label,
}


def request_approval(
    reg: Registry,
    audit: AuditLog,
    action: str,
    params: dict[str, Any],
    *,
    requested_by: str,
    reason: str = "",
) -> Approval:
    """Record a pending action for a human to approve or deny."""
    if action not in EXECUTORS:
        raise ForgeError(f"unknown action '{action}'", hint=f"one of {', '.join(EXECUTORS)}")
    row = {
        "id": f"apr-{int(time.time() * 1000):011x}{secrets.token_hex(3)}",
        "action": action,
        "params": dict(params),
        "requested_by": requested_by,
        "reason": reason,
        "status": PENDING,
        "created_at": _now(),
        "decided_at": None,
        "decided_by": None,
        "result": None,
        "error": None,
    }
    with reg.transaction(write=True) as s:
        s.execute(insert(approvals).values(**row))
    audit.append(
        "approval_requested",
        approval=row["id"],
        action=action,
        params=row["params"],
        principal=requested_by,
        reason=reason,
    )
    return Approval(**row)


def get_approval(reg: Registry, ref: str) -> Approval:
    with reg.transaction() as s:
        rows = s.execute(select(approvals).where(approvals.c.id.startswith(ref))).mappings().all()
    exact = [r for r in rows if r["id"] == ref]
    if len(exact) != 1 and len(rows) != 1:
        raise NotFoundError(f"unknown approval '{ref}'", hint="run `forgeml approvals list`")
    return Approval(**(exact or rows)[0])


def list_approvals(reg: Registry, status: str | None = None) -> list[Approval]:
    with reg.transaction() as s:
        q = select(approvals).order_by(approvals.c.created_at)
        if status:
            q = q.where(approvals.c.status == status)
        return [Approval(**r) for r in s.execute(q).mappings().all()]


def check_approver(reg: Registry, name: str, pending: Approval) -> None:
    """Refuse a decision on `pending` unless `name` is a human principal (it holds an
    unrevoked key, none with the agent role) with the approver or admin role, other than the
    one who asked."""
    if name == pending.requested_by:
        raise ForgeError(
            f"{name} requested {pending.id} and cannot approve or deny it",
            hint="another person must decide",
        )
    roles = KeyStore(reg.engine).roles_of(name)
    hint = (
        "approvals are decided by a person holding a key with the approver role: "
        f"`forgeml keys create --principal NAME --role {APPROVER_ROLE}`, then decide with "
        f"that key (`--key-file PATH` or ${KEY_ENV})"
    )
    if not roles:
        raise ForgeError(f"'{name}' is not a known principal (no API key)", hint=hint)
    if AGENT_ROLE in roles:
        raise ForgeError(f"'{name}' holds an agent key; approvals need a person", hint=hint)
    if not roles & DECIDING_ROLES:
        raise ForgeError(
            f"'{name}' has neither the {APPROVER_ROLE} nor the {ADMIN_ROLE} role", hint=hint
        )


def read_api_key(key_file: Path | None) -> str:
    """The caller's API key: the first line of `key_file`, else $FORGEML_API_KEY."""
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            raise ForgeError(
                f"cannot read the key file {key_file}: {exc.strerror}",
                hint="pass a file that holds your API key (fml_...)",
            ) from None
    else:
        key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise ForgeError(
            "deciding an approval needs the approver's own API key",
            hint=f"pass --key-file PATH (a file holding your fml_... key) or set ${KEY_ENV}",
        )
    return key


def approver_from_key(reg: Registry, key: str, as_name: str | None = None) -> str:
    """The principal whose valid, unrevoked `key` this is (the approver), as REST checks a
    bearer key; `as_name`, when given, must be that principal."""
    principal = KeyStore(reg.engine).authenticate(key)
    if principal is None:
        raise ForgeError(
            "the API key is not valid (unknown, wrong or revoked)",
            hint="use your own key with the approver role "
            f"(`forgeml keys create --principal NAME --role {APPROVER_ROLE}`)",
        )
    if as_name is not None and as_name != principal.name:
        raise ForgeError(
            f"--as {as_name} does not match the key, which belongs to {principal.name}",
            hint=f"leave --as out, or pass {as_name}'s own key",
        )
    return principal.name


def caller_clearance(reg: Registry, key_file: Path | None) -> str | None:
    """The clearance of the CLI caller's key (`key_file`, else $FORGEML_API_KEY); None (the
    lowest level) when no key is given."""
    if key_file is None and not os.environ.get(KEY_ENV, "").strip():
        return None
    key = read_api_key(key_file)
    principal = KeyStore(reg.engine).authenticate(key)
    if principal is None:
        raise ForgeError(
            "the API key is not valid (unknown, wrong or revoked)",
            hint="pass your own key with --key-file or $FORGEML_API_KEY",
        )
    return principal.clearance


def change_label(
    reg: Registry,
    audit: AuditLog,
    ref: str,
    level: str,
    *,
    actor: str,
    reason: str = "",
) -> dict[str, Any]:
    """Give an asset a classification label (audited): raising it (or labelling an unlabelled
    asset at or above UNLABELLED_DEFAULT) takes effect at once and reaches every asset made
    from it; lowering it becomes a pending approval that a person with the approver role
    decides (`approvals approve`)."""
    if level not in LEVELS:
        raise ForgeError(f"unknown label '{level}'", hint=f"use one of {', '.join(LEVELS)}")
    asset = reg.get_asset(ref)
    if is_downgrade(asset, level):
        params = {
            "asset": asset.id,
            "label": level,
            "previous": asset.metadata.get("classification"),
        }
        pending = request_approval(reg, audit, "label", params, requested_by=actor, reason=reason)
        return {"status": "pending_approval", "approval": pending.id, **params}
    change = set_label(reg, asset.id, level)
    audit.append(
        "asset_labelled", principal=actor, asset_id=asset.id, label=level,
        previous=change.previous, effective=change.effective, restamped=change.restamped,
        reason=reason,
    )  # fmt: skip
    return {"status": "done", **asdict(change)}


def _claim(
    reg: Registry,
    audit: AuditLog,
    ref: str,
    status: str,
    *,
    event: str,
    decided_by: str,
    **details: Any,
) -> Approval:
    """Move a pending approval to `status` exactly once (two approvers cannot both run it),
    once `decided_by` passes `check_approver`; audited as `event` with `details`."""
    target = get_approval(reg, ref)
    if target.status == PENDING:
        check_approver(reg, decided_by, target)
    with reg.transaction(write=True) as s:
        done = s.execute(
            update(approvals)
            .where(approvals.c.id == target.id, approvals.c.status == PENDING)
            .values(status=status, decided_at=_now(), decided_by=decided_by)
        ).rowcount
    if done != 1:
        raise ForgeError(f"approval {target.id} is already {get_approval(reg, target.id).status}")
    claimed = get_approval(reg, target.id)
    audit.append(
        event,
        approval=claimed.id,
        action=claimed.action,
        principal=decided_by,
        requested_by=claimed.requested_by,
        **details,
    )
    return claimed


def approve(
    ws: Workspace, reg: Registry, audit: AuditLog, ref: str, *, decided_by: str
) -> Approval:
    """Approve and execute a pending action (as its requester, approver recorded); the
    approver must pass `check_approver`."""
    claimed = _claim(reg, audit, ref, "approving", event="approval_approved", decided_by=decided_by)
    actor = f"{claimed.requested_by} (approved by {decided_by})"
    try:
        result, error, status = EXECUTORS[claimed.action](ws, claimed.params, actor), None, EXECUTED
    except Exception as exc:  # the failure is recorded on the approval and audited
        result, error, status = None, f"{type(exc).__name__}: {exc}"[:2000], FAILED
    with reg.transaction(write=True) as s:
        s.execute(
            update(approvals)
            .where(approvals.c.id == claimed.id)
            .values(status=status, result=result, error=error)
        )
    audit.append(
        f"approval_{status}",
        approval=claimed.id,
        action=claimed.action,
        principal=actor,
        result=result,
        error=error,
    )
    return get_approval(reg, claimed.id)


def deny(
    reg: Registry, audit: AuditLog, ref: str, *, decided_by: str, reason: str = ""
) -> Approval:
    """Deny a pending action; it is never executed. The same people may deny as approve."""
    return _claim(
        reg, audit, ref, DENIED, event="approval_denied", decided_by=decided_by, reason=reason
    )
