"""Governance: classification labels inherited along the lineage (and, as they move here,
keys, policies, detectors and the audit log). Sits above the registry, below every stage."""
