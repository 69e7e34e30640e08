"""Untrusted code (the ``python`` tool, code rewards) runs here: a child process with limits,
no network, an unprivileged user and a private view of the file system (see docs/sandbox.md).

    >>> from sandbox import Limits, run_python
    >>> run_python("print(input()[::-1])", stdin="abc", limits=Limits(timeout_s=5)).stdout
    'cba\\n'
"""

from sandbox.limits import Limits, Result
from sandbox.runner import SandboxError, run_python
from sandbox.testcases import TestCase, TestReport, parse_tests, run_tests

__all__ = ["Limits", "Result", "SandboxError", "TestCase", "TestReport", "parse_tests", "run_python", "run_tests"]
