"""The ``math`` reward: the last ``\\boxed{}`` answer of a response, checked against the ground truth.

Scoring follows veRL's MATH reward (1.0 for an equivalent answer, else 0.0; no format
score): :func:`last_boxed_answer` takes the final ``\\boxed{...}`` (nested braces
allowed), ``\\boxed 5`` or ``\\fbox{...}``; :func:`is_equivalent` decides equivalence:

1. the two answers are equal after :func:`normalize` (a cheap string check);
2. otherwise the ``math-verify`` package parses both as LaTeX and compares them
   symbolically (``\\frac{1}{2}`` = ``0.5`` = ``1/2``, ``x=3`` = ``3``, sets, intervals);
3. only when math-verify is missing, cannot parse one side, raises or times out: the
   fallback compares both normalised answers as numbers (``\\frac{a}{b}``, ``a/b``,
   decimals, ``1,000``).

math-verify interrupts slow sympy work with ``signal.alarm``, which works only in a main
thread. Rewards normally run in the main thread of :class:`reward.safe_call.SafeRewardCaller`'s
child process (whose own timeout also contains a call that never returns); called from
another thread, math-verify runs without its own timeout.
"""

from __future__ import annotations

import math
import re
import threading
from fractions import Fraction
from typing import Any

try:
    import math_verify
    from math_verify import LatexExtractionConfig
    from math_verify.errors import TimeoutException
except ImportError:  # pragma: no cover - math-verify is a dependency; degrade to the fallback
    math_verify = None
    TimeoutException = TimeoutError

MATH_CORRECT = 1.0
MATH_WRONG = 0.0
MATH_VERIFY_TIMEOUT_S = 3
"""math-verify's own limit per parse / comparison (whole seconds: it uses ``signal.alarm``)."""
NUMERIC_REL_TOL = 1e-6

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_UNIT_RE = re.compile(r"\\(?:text|mbox|mathrm)\{\s+[^{}]*\}")  # "\text{ cm}": a unit after a space
_TEXT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_THIN_SPACE_RE = re.compile(r"\\[,;:! ]")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRAC_RE = re.compile(r"(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}")


def last_boxed_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\boxed x`` / ``\\fbox{...}``, or None.

    Braces nest (``\\boxed{\\frac{1}{\\sqrt{2}}}``) and escaped braces (``\\{``) do not
    count. An unbalanced or empty last box gives None.
    """
    matches = list(_BOXED_RE.finditer(text))
    if not matches:
        return None
    pos = matches[-1].end()
    rest = text[pos:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        start = pos + len(rest) - len(stripped) + 1
        depth, i = 1, start
        while i < len(text):
            char = text[i]
            if char == "\\":
                i += 2
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip() or None
            i += 1
        return None
    if rest[:1].isspace():  # "\boxed 5": the next token, up to whitespace or "$"
        token = re.match(r"\s*([^\s$]+)", rest)
        return (token.group(1).rstrip(".") or None) if token else None
    return None


def _fix_fracs(s: str) -> str:
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def normalize(answer: str) -> str:
    """A canonical string for an answer (after veRL's / Hendrycks' MATH ``strip_string``)."""
    s = answer.strip().replace("\n", "")
    s = _THIN_SPACE_RE.sub("", s)
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = _DEGREES_RE.sub("", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = _UNIT_RE.sub("", s)
    s = _TEXT_RE.sub(r"\1", s)
    s = s.replace(" ", "").rstrip(".")
    if s.count("=") == 1 and len(s.split("=")[0]) <= 2:  # "x=3", "k=3": keep the value
        s = s.split("=")[1]
    s = re.sub(r"^(-?)\.(\d)", r"\g<1>0.\2", s)  # ".5" -> "0.5"
    s = _fix_fracs(s)
    if re.fullmatch(r"-?\d+/-?\d+", s):  # "1/2" -> "\frac{1}{2}"
        num, den = s.split("/")
        s = f"\\frac{{{num}}}{{{den}}}"
    return s


def as_number(s: str) -> Fraction | None:
    """A normalised answer as an exact number (``3``, ``-0.5``, ``1,000``, ``\\frac{1}{2}``), or None."""
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    frac = _FRAC_RE.fullmatch(s)
    try:
        if frac:
            value = Fraction(frac.group(2)) / Fraction(frac.group(3))
            return -value if frac.group(1) else value
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def fallback_equivalent(answer: str, ground_truth: str) -> bool:
    """Equal after :func:`normalize`, or equal as numbers (relative tolerance 1e-6)."""
    a, b = normalize(answer), normalize(ground_truth)
    if a and a == b:
        return True
    x, y = as_number(a), as_number(b)
    if x is None or y is None:
        return False
    return x == y or math.isclose(float(x), float(y), rel_tol=NUMERIC_REL_TOL)


def _mv_parse(expr: str, timeout: int | None) -> list[Any]:
    config = [LatexExtractionConfig(boxed_match_priority=0)]
    return math_verify.parse(
        "\\boxed{" + expr + "}", extraction_config=config, parsing_timeout=timeout, raise_on_error=True
    )


def _parsed(values: list[Any]) -> bool:
    return any(not isinstance(v, str) for v in values)  # a sympy object, not just the raw string


def math_verify_equivalent(answer: str, ground_truth: str) -> bool | None:
    """math-verify's verdict, or None when it is missing, cannot parse a side, raises or times out."""
    if math_verify is None:
        return None
    timeout = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold, pred = _mv_parse(ground_truth, timeout), _mv_parse(answer, timeout)
        if not (_parsed(gold) and _parsed(pred)):
            return None
        return bool(math_verify.verify(gold, pred, timeout_seconds=timeout, raise_on_error=True))
    except (Exception, TimeoutException):  # noqa: BLE001 - any failure means "use the fallback"
        return None


def is_equivalent(answer: str, ground_truth: str) -> bool:
    """Whether ``answer`` and ``ground_truth`` denote the same value (see the module docstring)."""
    if normalize(answer) == normalize(ground_truth) != "":
        return True
    verdict = math_verify_equivalent(answer, ground_truth)
    return fallback_equivalent(answer, ground_truth) if verdict is None else verdict


def math_score(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    """1.0 when the last boxed answer of ``response`` equals ``ground_truth``, else 0.0.

    A ground truth that itself contains ``\\boxed{}`` (a whole solution) is reduced to its
    last boxed answer first.
    """
    answer = last_boxed_answer(response)
    if answer is None:
        return MATH_WRONG
    truth = last_boxed_answer(ground_truth) or ground_truth
    return MATH_CORRECT if is_equivalent(answer, truth) else MATH_WRONG
