"""Classification labels on assets, inherited along the lineage.

An asset's effective label is the most sensitive of its own label and the labels of
everything upstream of it (a tokenizer, shards, model, adapter or eval made from restricted
data is restricted). `effective_label` walks the lineage on every call, so a later change of
an input reaches every derived asset; the label is also stamped into each asset's metadata
(`classification`, with `classification_from` naming the upstream asset it comes from) when
a stage registers it and whenever a label upstream changes. Serving, exports and the control
plane's reads check it with `clearance_covers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from forgeml.core.errors import ForgeError
from forgeml.registry import Asset, Registry

LEVELS = ("public", "internal", "confidential", "restricted")  # least to most sensitive
LABEL_KEY = "classification"
INHERITED_KEY = "classification_from"  # set when the label was inherited, not given
OWN_KEY = "classification_own"  # an inherited label's asset keeps its own one here
# What an asset with no label of its own counts as when its label is changed: lowering it to
# `public` is a downgrade (the control plane treats unlabelled data as internal).
UNLABELLED_DEFAULT = "internal"


class ClearanceError(ForgeError):
    """A principal's clearance does not cover an asset's effective label."""


def rank(label: str, levels: Sequence[str] = LEVELS) -> int:
    """Position of `label` among `levels`; an unknown label ranks above every level, so no
    clearance covers it."""
    return levels.index(label) if label in levels else len(levels)


def most_sensitive(labels: Sequence[str | None], levels: Sequence[str] = LEVELS) -> str | None:
    """The most sensitive of `labels` (None when none is set)."""
    present = [label for label in labels if label]
    return max(present, key=lambda label: rank(label, levels)) if present else None


def own_label(asset: Asset) -> str | None:
    """The label given to the asset itself (not one stamped on it from upstream)."""
    if asset.metadata.get(INHERITED_KEY):
        return asset.metadata.get(OWN_KEY) or None
    return asset.metadata.get(LABEL_KEY) or None


def label_origin(
    reg: Registry, asset: Asset, levels: Sequence[str] = LEVELS
) -> tuple[str | None, str | None]:
    """(effective label, id of the asset that carries it) of `asset`, walking its lineage up
    through parents and the runs that made it, deleted ancestors included."""
    label, source = own_label(asset), asset.id
    for node in reg.lineage(asset.id, "up").nodes[1:]:
        if node.get("type") != "asset":
            continue
        up = own_label(reg.get_asset(node["id"], deleted_ok=True))
        if up is not None and (label is None or rank(up, levels) > rank(label, levels)):
            label, source = up, node["id"]
    return label, (source if label is not None else None)


def effective_label(reg: Registry, asset: Asset, levels: Sequence[str] = LEVELS) -> str | None:
    """The most sensitive label on `asset` or anywhere upstream of it (None: unlabelled)."""
    return label_origin(reg, asset, levels)[0]


def clearance_covers(
    clearance: str | None, label: str | None, levels: Sequence[str] = LEVELS
) -> bool:
    """True if a key with `clearance` may read an asset labelled `label`. No (or an unknown)
    clearance counts as the lowest level; an unlabelled asset as the lowest level too, as in
    serving."""
    have = levels.index(clearance) if clearance in levels else 0
    return label is None or rank(label, levels) <= have


def require_clearance(
    reg: Registry, asset: Asset, clearance: str | None, *, action: str = "read"
) -> str | None:
    """The asset's effective label, or `ClearanceError` when `clearance` does not cover it."""
    label, source = label_origin(reg, asset)
    if not clearance_covers(clearance, label):
        upstream = f" (inherited from {source})" if source and source != asset.id else ""
        raise ClearanceError(
            f"{asset.kind} {asset.id} is labelled {label}{upstream}; clearance "
            f"{clearance or 'none'} may not {action} it",
            hint=f"use a key whose clearance is {label} or higher",
        )
    return label


def require_run_clearance(
    reg: Registry, run_id: str, clearance: str | None, *, action: str = "read"
) -> str | None:
    """The most sensitive effective label of a run's inputs (what its checkpoints were trained
    on), or `ClearanceError` when `clearance` does not cover it. For files a run wrote that
    are not assets of their own, e.g. training checkpoints under the workspace's runs/."""
    run = reg.get_run(run_id)
    found = [(label_origin(reg, reg.get_asset(ref, deleted_ok=True))) for ref in run.inputs]
    label = most_sensitive([lab for lab, _ in found])
    if not clearance_covers(clearance, label):
        source = next(src for lab, src in found if lab == label)
        raise ClearanceError(
            f"run {run.id} was trained on data labelled {label} (from {source}); clearance "
            f"{clearance or 'none'} may not {action} its checkpoints",
            hint=f"use a key whose clearance is {label} or higher",
        )
    return label


def stamp_effective_label(reg: Registry, ref: str) -> Asset:
    """Write the asset's effective label into its metadata (`classification`, and
    `classification_from` when it comes from upstream, its own label kept under
    `classification_own`); unchanged metadata is not written."""
    asset = reg.get_asset(ref)
    label, source = label_origin(reg, asset)
    if label is None:
        return asset
    own = own_label(asset)
    if source == asset.id:
        wanted = {LABEL_KEY: label}
    else:
        wanted = {LABEL_KEY: label, INHERITED_KEY: source, **({OWN_KEY: own} if own else {})}
    keys = (LABEL_KEY, INHERITED_KEY, OWN_KEY)
    if {k: asset.metadata[k] for k in keys if asset.metadata.get(k)} == wanted:
        return asset
    return reg.update_asset_metadata(asset.id, wanted, remove=[k for k in keys if k not in wanted])


@dataclass(frozen=True)
class LabelChange:
    asset_id: str
    previous: str | None  # the asset's own label before
    label: str
    effective: str | None  # after the change, upstream included
    downgrade: bool
    restamped: list[str]  # derived assets whose stamped label was rewritten


def is_downgrade(asset: Asset, level: str, levels: Sequence[str] = LEVELS) -> bool:
    """True if giving `asset` the label `level` lowers its own label (an unlabelled asset
    counts as UNLABELLED_DEFAULT)."""
    return rank(level, levels) < rank(own_label(asset) or UNLABELLED_DEFAULT, levels)


def set_label(reg: Registry, ref: str, level: str, *, allow_downgrade: bool = False) -> LabelChange:
    """Give an asset its own label and restamp everything derived from it. A downgrade is
    refused unless `allow_downgrade` (the approval flow passes it once a human agreed)."""
    if level not in LEVELS:
        raise ForgeError(f"unknown label '{level}'", hint=f"use one of {', '.join(LEVELS)}")
    asset = reg.get_asset(ref)
    previous, downgrade = own_label(asset), is_downgrade(asset, level)
    if downgrade and not allow_downgrade:
        raise ForgeError(
            f"lowering {asset.id} from {previous or UNLABELLED_DEFAULT} to {level} needs "
            "an approval",
            hint="`forgeml assets label` asks for one; an approver runs "
            "`forgeml approvals approve ID`",
        )
    reg.update_asset_metadata(asset.id, {LABEL_KEY: level}, remove=[INHERITED_KEY, OWN_KEY])
    stamp_effective_label(reg, asset.id)  # an upstream label may still be higher
    restamped = []
    for node in reg.lineage(asset.id, "down").nodes[1:]:
        if node.get("type") == "asset" and not node.get("deleted"):
            before = reg.get_asset(node["id"]).metadata.get(LABEL_KEY)
            if stamp_effective_label(reg, node["id"]).metadata.get(LABEL_KEY) != before:
                restamped.append(node["id"])
    effective = effective_label(reg, reg.get_asset(asset.id))
    return LabelChange(asset.id, previous, level, effective, downgrade, restamped)
