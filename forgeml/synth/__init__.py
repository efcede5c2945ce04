"""Synthetic data: rule-based tasks from the corpus and teacher-generated (self-instruct)
through any OpenAI-compatible endpoint; results are chat datasets with lineage."""
