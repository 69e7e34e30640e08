"""Environments for multi-turn, tool-using rollouts: the interface (:mod:`envs.base`), tools,
tool-call parsers, prompt rendering and the built-in environments."""
