"""Model architectures (plain single-device PyTorch), HF import/export, sampling (parallelism is
train.parallelize)."""
