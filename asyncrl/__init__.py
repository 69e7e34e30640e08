"""asyncrl: asynchronous actor-learner RL post-training for LLMs.

This package holds the contracts every process shares (config, wire schemas,
transport, weight sync, launcher). It imports without vLLM installed.
"""

__version__ = "0.1.0"
