"""Reward functions (by registry name) and a process-isolated caller with timeouts."""
