"""Shared foundations imported by every stage: config, errors, workspace, seeding, devices."""
