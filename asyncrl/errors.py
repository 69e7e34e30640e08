"""Errors every process maps to exit code 2 (bad input), besides ConfigError and DataError."""


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required; the message says which and why."""


class PeerMissing(RuntimeError):
    """A peer process did not come or stopped answering within its bounded wait; the message names it.

    Not bad input (exit 1, not 2), but an expected operational failure: reported without a traceback.
    """
