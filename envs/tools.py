"""Built-in tools: ``calculator`` (safe arithmetic) and ``python`` (code run in :mod:`sandbox`).

A tool's function returns the text the model reads; raising makes an error observation that
:class:`envs.tool_env.ToolEnvironment` counts as a tool error, with the exception's message as
the text. So every message below is written for the model to read and act on.

The calculator never calls ``eval``: it walks the expression's AST and admits only numbers,
``+ - * / // % **``, unary ``+``/``-`` and parentheses. Sizes are bounded before computing, so
``9**9**9`` or ``10**10**10`` is an error, not a hung worker: integers up to :data:`MAX_DIGITS`
digits, exponents up to :data:`MAX_EXPONENT`, expressions up to :data:`MAX_EXPRESSION_CHARS`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from envs.base import Tool

MAX_EXPRESSION_CHARS = 300
MAX_DIGITS = 100
MAX_EXPONENT = 1000
_LIMIT = 10 ** MAX_DIGITS

Number = int | float
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
           ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>"}


class CalculatorError(ValueError):
    """An expression the calculator refuses; the message is for the model."""


def calculate(expression: str) -> Number:
    """The value of an arithmetic ``expression``, or :class:`CalculatorError` saying what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("expression is empty; give an arithmetic expression such as '123 * 456'")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression is {len(expression)} characters; the limit is {MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" (column {exc.offset})" if exc.offset else ""
        raise CalculatorError(f"cannot parse {expression!r}: {exc.msg}{where}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, pathological nesting
        raise CalculatorError(f"cannot parse {expression!r}: {exc}") from None
    return _check(_eval(tree.body))


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        fn = _BINARY.get(type(node.op))
        if fn is None:
            raise CalculatorError(f"operator {_SYMBOL.get(type(node.op), type(node.op).__name__)!r} is not allowed; "
                                  "use + - * / // % ** and parentheses")
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _check(fn(left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large") from None
    what = {ast.Name: "names", ast.Call: "function calls", ast.Attribute: "attributes", ast.Subscript: "indexing"}
    kind = next((v for k, v in what.items() if isinstance(node, k)), f"{type(node).__name__} expressions")
    raise CalculatorError(f"{kind} are not allowed; use numbers, + - * / // % ** and parentheses")


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is too large (the limit is {MAX_EXPONENT})")
    if base != 0 and exponent * math.log10(abs(base)) > MAX_DIGITS:  # a negative exponent shrinks |base| > 1
        raise CalculatorError(f"{base} ** {exponent} has more than {MAX_DIGITS} digits")


def _check(value: Any) -> Number:
    if isinstance(value, complex):  # (-8) ** 0.5
        raise CalculatorError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    if abs(value) >= _LIMIT:
        raise CalculatorError(f"a number in the calculation has more than {MAX_DIGITS} digits")
    return value


def format_number(value: Number) -> str:
    """``12`` for ints and integral floats under 1e15 (``10/2`` reads ``5``), else ``repr``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def calculator(expression: str) -> str:
    return format_number(calculate(expression))


def calculator_tool() -> Tool:
    """The ``calculator`` tool: ``{"expression": "123 * 456"}`` -> ``"56088"``."""
    return Tool(
        name="calculator",
        description="Evaluate an arithmetic expression exactly. Supports + - * / // % ** and parentheses.",
        parameters={"type": "object",
                    "properties": {"expression": {"type": "string", "description": "e.g. '(1234 * 5678) + 9'"}},
                    "required": ["expression"]},
        fn=calculator,
    )


def summarize_run(exit_code: int | None, stdout: str, stderr: str, limit_hit: str | None, max_chars: int) -> str:
    """What the model reads after running code: the exit code, the limit hit, stdout and stderr capped."""
    code = "none (the program was killed)" if exit_code is None else str(exit_code)
    lines = [f"exit code: {code}" + (f" (limit hit: {limit_hit})" if limit_hit else "")]
    for label, text in (("stdout", stdout), ("stderr", stderr)):
        if text:
            cut = len(text) - max_chars
            lines.append(f"{label}:\n{text[:max_chars]}" + (f"\n... ({cut} more characters)" if cut > 0 else ""))
    if not stdout and not stderr:
        lines.append("(no output)")
    return "\n".join(lines)


def python_tool(*, timeout_s: float = 10.0, memory_mb: int = 512, max_chars: int = 2000) -> Tool:
    """The ``python`` tool: runs ``code`` in :func:`sandbox.run_python` and reports exit code and output.

    A program that fails (non-zero exit, a limit hit) is a normal observation, not a tool error:
    the tool worked and the model reads why its program failed.
    """

    def run(code: str, stdin: str = "") -> str:
        from sandbox import Limits, run_python  # imported here: most environments never run code

        result = run_python(code, stdin=stdin, limits=Limits(timeout_s=timeout_s, cpu_s=timeout_s,
                                                             memory_mb=memory_mb))
        return summarize_run(result.exit_code, result.stdout, result.stderr, result.limit_hit, max_chars)

    return Tool(
        name="python",
        description="Run a Python 3 program and see its exit code, stdout and stderr. Print what you want to see.",
        parameters={"type": "object",
                    "properties": {"code": {"type": "string", "description": "the complete program"},
                                   "stdin": {"type": "string", "description": "text given on standard input"}},
                    "required": ["code"]},
        fn=run,
        sandboxed=True,
    )


BUILTIN_TOOLS: dict[str, Callable[[], Tool]] = {"calculator": calculator_tool, "python": python_tool}
