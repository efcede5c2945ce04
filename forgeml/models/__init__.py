"""Model architectures (plain single-device PyTorch), HF import/export, sampling, parallelize."""
