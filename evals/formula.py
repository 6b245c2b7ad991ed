"""A multi grader's `calculate_output`, e.g. `0.5 * exact + 0.5 * max(fuzzy, bleu)`: parsed with
`ast` and evaluated by walking the tree, never by `eval`, because the formula comes from a user.

Allowed: numbers, the sub-graders' names, + - * / **, unary - and +, parentheses, and the
functions in FUNCTIONS. Anything else is refused when the grader is validated."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable

from gemlora.evals.errors import GraderError

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def check_formula(formula: str, names: Iterable[str]) -> ast.Expression:
    """The parsed formula, or a GraderError naming the first token that is not allowed."""
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except SyntaxError as error:
        raise GraderError(f"formula {formula!r}: {error.msg}", "formula_parse_error") from None
    known = set(names)
    # A function's name is allowed only where it is called: `max + 1` is refused.
    callees = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if id(node) not in callees:
            _check_node(node, formula, known)
    return tree


def evaluate(formula: str, scores: dict[str, float]) -> float:
    """The formula's value over the sub-graders' scores."""
    tree = check_formula(formula, scores)
    try:
        return float(_value(tree.body, scores))
    except (ArithmeticError, ValueError) as error:  # 1/0, log(0), 1e308 ** 2
        raise GraderError(
            f"formula {formula!r}: {error} (scores {scores})", "other_error"
        ) from None


def _check_node(node: ast.AST, formula: str, known: set[str]) -> None:
    token = ast.get_source_segment(formula.strip(), node) if hasattr(node, "lineno") else ""
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            called = ast.unparse(node.func)
            raise GraderError(
                f"formula {formula!r}: function {called!r} is not one of {sorted(FUNCTIONS)}",
                "formula_parse_error",
            )
        if node.keywords or not node.args:
            raise GraderError(f"formula {formula!r}: {token!r} needs plain arguments")
    elif isinstance(node, ast.Name):
        if node.id not in known:
            raise GraderError(
                f"formula {formula!r}: {node.id!r} is not a sub-grader (those are {sorted(known)})",
                "invalid_variable_error",
            )
    elif isinstance(node, (ast.BinOp, ast.UnaryOp)):
        if type(node.op) not in _BINARY and type(node.op) not in _UNARY:
            raise GraderError(
                f"formula {formula!r}: the operator in {token!r} is not one of + - * / **",
                "formula_parse_error",
            )
    elif isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):
            raise GraderError(
                f"formula {formula!r}: {token!r} is not a number", "formula_parse_error"
            )
    elif not isinstance(node, (ast.Expression, ast.Load, *_BINARY, *_UNARY)):
        raise GraderError(
            f"formula {formula!r}: {token or type(node).__name__!r} is not allowed "
            f"(only numbers, sub-grader names, + - * / **, parentheses and {sorted(FUNCTIONS)})",
            "formula_parse_error",
        )


def _value(node: ast.expr, scores: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)  # floats overflow with an error where ints would grow unbounded
    if isinstance(node, ast.Name):
        return scores[node.id]
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_value(node.operand, scores))
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_value(node.left, scores), _value(node.right, scores))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # check_formula's word
    return FUNCTIONS[node.func.id](*(_value(arg, scores) for arg in node.args))
