"""The agent-first control plane: a job queue in the registry database run by workers."""
