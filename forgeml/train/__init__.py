"""Training stages: one readable loop per objective (pretrain, ...) and the plain functions
they share (optimizer and schedule, checkpoints, distributed setup, data order, metrics).
"""
