"""Command groups that live outside cli.py: each module registers its commands on the Typer
apps defined in forgeml.cli (imported at the bottom of cli.py, so the apps exist already)."""
