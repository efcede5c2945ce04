"""Governance: principals and API keys, serving policies, the PII/secret detectors shared with
curation, classification labels inherited along the lineage, and the tamper-evident audit log.
Sits above the registry, below every stage."""
