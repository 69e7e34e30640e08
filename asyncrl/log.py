"""Process-wide logging setup: one call at the start of each process."""

from __future__ import annotations

import logging


def setup_logging(name: str, level: str = "INFO") -> logging.Logger:
    """Configure the root logger to stderr, tagging every line with ``[name]``.

    ``name`` is the process role (``learner``, ``generator-0``, ...), so interleaved
    output of several processes in one terminal stays attributable. ``force=True``
    replaces handlers installed earlier (by a library or a parent's config), so a
    spawned child does not log twice.

    Returns:
        ``logging.getLogger(name)``.
    """
    tag = name.replace("%", "%%")  # the tag is literal text inside a %-style format
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s %(levelname)s [{tag}] %(message)s",
        force=True,
    )  # basicConfig's default stream is stderr: stdout stays free for the progress bar
    return logging.getLogger(name)
