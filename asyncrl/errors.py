"""Errors every process maps to exit code 2 (bad input), besides ConfigError and DataError."""


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required; the message says which and why."""
