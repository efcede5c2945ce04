"""Launchers that start forgeml's training loops on many processes and machines.

`torchrun` builds torchrun command lines; the Slurm and Kubernetes launchers write job files
that run them on a cluster.
"""
