"""MLflow's search filters and order_by, for runs and experiments.

Supported: clauses joined by AND (any case), each `<entity>.<key> <op> <value>` with entity
metrics | params | tags | attributes (and their singular and short forms) or a bare attribute
(`run_name`, `status`, `start_time`...). Keys may be quoted with backticks or double quotes
(metrics.`val loss`). Ops: = != < <= > >= for numbers (metrics, times); = != LIKE ILIKE IN
NOT IN for strings. OR, parentheses and `IS NULL` are not supported (INVALID_PARAMETER_VALUE).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracking.protocol import invalid

ENTITIES = {
    "metric": "metrics",
    "metrics": "metrics",
    "param": "params",
    "params": "params",
    "parameter": "params",
    "parameters": "params",
    "tag": "tags",
    "tags": "tags",
    "attribute": "attributes",
    "attributes": "attributes",
    "attr": "attributes",
    "run": "attributes",
}
NUMBER_OPS = {"=", "!=", "<", "<=", ">", ">="}
STRING_OPS = {"=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"}

_SPACE = re.compile(r"\s*")
_PREFIX = re.compile(r"([A-Za-z_]+)\.")
_BARE_KEY = re.compile(r"[\w.\-/:]+")
_WORD = re.compile(r"\w+")
_OP = re.compile(r"(<=|>=|!=|=|<|>|(?i:not\s+in)\b|(?i:in)\b|(?i:i?like)\b)")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_AND = re.compile(r"(?i:and)\b")


@dataclass(frozen=True)
class Clause:
    entity: str  # metrics | params | tags | attributes
    key: str
    op: str  # upper case
    value: Any  # float, str or tuple of str


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip(self) -> None:
        match = _SPACE.match(self.text, self.pos)
        self.pos = match.end() if match else self.pos

    def at_end(self) -> bool:
        self.skip()
        return self.pos >= len(self.text)

    def match(self, pattern: re.Pattern[str]) -> str | None:
        self.skip()
        match = pattern.match(self.text, self.pos)
        if match is None:
            return None
        self.pos = match.end()
        return match.group(0)

    def quoted(self, quotes: str) -> str | None:
        self.skip()
        if self.pos >= len(self.text) or self.text[self.pos] not in quotes:
            return None
        quote = self.text[self.pos]
        end = self.text.find(quote, self.pos + 1)
        if end < 0:
            raise self.error("an unclosed quote")
        value = self.text[self.pos + 1 : end]
        self.pos = end + 1
        return value

    def error(self, what: str) -> Exception:
        return invalid(
            f"Invalid filter {self.text!r}: {what} at position {self.pos}. "
            "Write clauses like metrics.loss < 0.5 AND params.lr = '0.01'."
        )


def filter_parse(text: str, *, attributes: set[str], default_entity: str) -> list[Clause]:
    """The filter's clauses; INVALID_PARAMETER_VALUE for anything else."""
    scanner = _Scanner(text or "")
    clauses: list[Clause] = []
    if scanner.at_end():
        return clauses
    while True:
        clauses.append(_clause(scanner, attributes, default_entity))
        if scanner.at_end():
            return clauses
        if scanner.match(_AND) is None:
            raise scanner.error("expected AND")


def _clause(scanner: _Scanner, attributes: set[str], default_entity: str) -> Clause:
    start = scanner.pos
    prefix = scanner.match(_PREFIX)
    if prefix is not None and prefix[:-1].lower() not in ENTITIES:
        scanner.pos = start
        prefix = None
    entity = ENTITIES[prefix[:-1].lower()] if prefix else default_entity
    key = scanner.quoted('`"')
    if key is None:
        key = scanner.match(_BARE_KEY if prefix else _WORD)
    if not key:
        raise scanner.error("expected a key such as metrics.loss")
    if entity == "attributes" and key not in attributes:
        raise scanner.error(f"unknown attribute {key!r} (known: {', '.join(sorted(attributes))})")
    op_text = scanner.match(_OP)
    if op_text is None:
        raise scanner.error("expected a comparison (=, !=, <, <=, >, >=, LIKE, ILIKE, IN)")
    op = " ".join(op_text.upper().split())
    if op in {"IN", "NOT IN"}:
        value: Any = _list(scanner)
    else:
        text = scanner.quoted("'\"")
        if text is not None:
            value = text
        else:
            number = scanner.match(_NUMBER)
            if number is None:
                raise scanner.error("expected a value ('text' or a number)")
            value = float(number)
    return Clause(entity, key, op, value)


def _list(scanner: _Scanner) -> tuple[str, ...]:
    if scanner.match(re.compile(r"\(")) is None:
        raise scanner.error("expected ( after IN")
    items: list[str] = []
    while True:
        item = scanner.quoted("'\"")
        if item is None:
            number = scanner.match(_NUMBER)
            if number is None:
                raise scanner.error("expected a quoted value in the list")
            item = number
        items.append(item)
        if scanner.match(re.compile(r"\)")) is not None:
            return tuple(items)
        if scanner.match(re.compile(r",")) is None:
            raise scanner.error("expected , or ) in the list")


def like_regex(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    parts = [".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def compare(actual: Any, op: str, expected: Any) -> bool:
    """One clause against one value; a missing value (None) matches nothing."""
    if actual is None:
        return False
    if isinstance(actual, int | float):
        return _compare_numbers(float(actual), op, expected)
    return _compare_text(str(actual), op, expected)


def _compare_numbers(number: float, op: str, expected: Any) -> bool:
    if op not in NUMBER_OPS:
        raise invalid(f"{op} does not apply to numbers.")
    try:
        target = float(expected)
    except (TypeError, ValueError):
        raise invalid(f"Expected a number to compare with, got {expected!r}.") from None
    if math.isnan(number):
        return op == "!="
    checks: dict[str, Callable[[float, float], bool]] = {
        "=": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    return checks[op](number, target)


def _compare_text(text: str, op: str, expected: Any) -> bool:
    if op in {"IN", "NOT IN"}:
        return (text in expected) == (op == "IN")
    if isinstance(expected, float):
        expected = _number_text(expected)
    if op in {"=", "!="}:
        return bool(text == expected) == (op == "=")
    if op in {"LIKE", "ILIKE"}:
        return bool(like_regex(expected, ignore_case=op == "ILIKE").fullmatch(text))
    raise invalid(f"{op} does not apply to text; use =, !=, LIKE, ILIKE, IN or NOT IN.")


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(frozen=True)
class Order:
    entity: str
    key: str
    ascending: bool


def order_parse(items: list[str], *, attributes: set[str], default_entity: str) -> list[Order]:
    orders = []
    for item in items:
        text = item.strip()
        ascending = True
        words = text.rsplit(None, 1)
        if len(words) == 2 and words[1].upper() in {"ASC", "DESC"}:
            text, ascending = words[0], words[1].upper() == "ASC"
        scanner = _Scanner(text)
        prefix = scanner.match(_PREFIX)
        if prefix is not None and prefix[:-1].lower() not in ENTITIES:
            scanner.pos, prefix = 0, None
        entity = ENTITIES[prefix[:-1].lower()] if prefix else default_entity
        key = scanner.quoted('`"') or scanner.match(_BARE_KEY if prefix else _WORD)
        if not key or not scanner.at_end():
            raise invalid(f"Invalid order_by clause {item!r}.")
        if entity == "attributes" and key not in attributes:
            raise invalid(f"Invalid order_by clause {item!r}: unknown attribute {key!r}.")
        orders.append(Order(entity, key, ascending))
    return orders


def sort_rows(
    rows: list[Any], orders: list[Order], value_of: Callable[[Any, str, str], Any]
) -> list[Any]:
    """Stable multi-key sort; missing values last whichever the direction (as MLflow)."""
    for order in reversed(orders):
        present = [row for row in rows if value_of(row, order.entity, order.key) is not None]
        missing = [row for row in rows if value_of(row, order.entity, order.key) is None]
        present.sort(
            key=lambda row: _sortable(value_of(row, order.entity, order.key)),
            reverse=not order.ascending,
        )
        rows = present + missing
    return rows


def _sortable(value: Any) -> tuple[int, Any]:
    if isinstance(value, int | float):
        return (0, -math.inf if math.isnan(value) else value)
    return (1, str(value))
