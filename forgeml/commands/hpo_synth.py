"""CLI commands for hpo synth (registered on the apps of forgeml.cli)."""

from __future__ import annotations
