"""Rollout generators: vLLM engines producing groups of samples with behaviour log-probs."""
