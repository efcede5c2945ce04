"""`python -m forgeml.cli ARGS` runs the `forgeml` command line (how workers run queued jobs
and HPO starts its trial workers)."""

from forgeml.cli import main

main()
