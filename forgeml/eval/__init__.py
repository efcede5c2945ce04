"""Evaluation: held-out perplexity and bits-per-byte now; KPI suites and gates build on it."""
