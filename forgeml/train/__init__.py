"""Training stages: one readable loop per objective (pretrain, sft, dpo, online_dpo,
reward_model, rl) and the plain functions they share (resume and run identity, optimizer and
schedule, checkpoints, distributed setup, data order, metrics).
"""
