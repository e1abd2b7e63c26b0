"""Reading PostgreSQL's EXPLAIN (ANALYZE, FORMAT JSON) plans in tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A plan node and every node under it."""
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


def rows_taken(node: dict[str, Any]) -> int:
    """The rows a node took from its relation: returned, or removed by its filter or an index
    recheck, times its loops."""
    per_loop = (
        node["Actual Rows"]
        + node.get("Rows Removed by Filter", 0)
        + node.get("Rows Removed by Index Recheck", 0)
    )
    return int(per_loop * node["Actual Loops"])
