"""Choosing which benchmark rows to run: ``--categories`` and a ``--limit`` stratified over categories.

A benchmark *item* is one id; an item may have rows under several conditions (MM-SafetyBench loads
one row per item and condition). ``limit_items`` keeps whole items, so every chosen item is
evaluated under every condition, and picks them round-robin over the categories in the order they
first appear: ``--limit 12`` on the 13 MM-SafetyBench scenarios takes the first item of 12
scenarios, not 12 items of the first one.

Example:
    >>> from safety_glasses.eval.schema import BenchRow
    >>> rows = [BenchRow(id=f"{c}{i}", question="q", kind="harmful", category=c) for c in "ab" for i in range(3)]
    >>> [r.id for r in limit_items(rows, 3)]
    ['a0', 'a1', 'b0']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .schema import BenchError, BenchRow

__all__ = ["filter_categories", "limit_items", "category_names"]


def _norm(name: str) -> str:
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


def category_names(row: BenchRow) -> set[str]:
    """The names a row answers to: its category and, where the loader kept one, its scenario
    (``01-Illegal_Activitiy`` as well as ``Illegal_Activitiy``), compared case-insensitively.

    Example:
        >>> sorted(category_names(BenchRow(id="a", question="q", kind="benign", category="Hate Speech")))
        ['hate_speech']
    """
    names = {_norm(row.category)}
    scenario = row.meta.get("scenario") if isinstance(row.meta, dict) else None
    if isinstance(scenario, str) and scenario:
        names.add(_norm(scenario))
    return names


def filter_categories(rows: Sequence[BenchRow], categories: Sequence[str]) -> list[BenchRow]:
    """The rows of the given categories (names as in :func:`category_names`); an unknown name is an
    error listing the benchmark's categories.

    Example:
        >>> rows = [BenchRow(id="a", question="q", kind="benign", category="x")]
        >>> [r.id for r in filter_categories(rows, ["X"])]
        ['a']
    """
    wanted = {_norm(c): c for c in categories if c.strip()}
    if not wanted:
        return list(rows)
    present: set[str] = set()
    for row in rows:
        present |= category_names(row)
    unknown = [c for key, c in wanted.items() if key not in present]
    if unknown:
        shown = ", ".join(dict.fromkeys(r.category for r in rows))
        raise BenchError(f"unknown category {unknown[0]!r}; this benchmark has: {shown}")
    return [r for r in rows if category_names(r) & set(wanted)]


def limit_items(rows: Sequence[BenchRow], limit: int | None) -> list[BenchRow]:
    """At most ``limit`` items (ids), round-robin over categories, each with all its rows, in the
    benchmark's own row order.

    Example:
        >>> rows = [BenchRow(id=i, question="q", kind="benign", category=c) for i, c in [("1", "a"), ("2", "a"), ("3", "b")]]
        >>> [r.id for r in limit_items(rows, 2)]
        ['1', '3']
    """
    if limit is None:
        return list(rows)
    if limit < 1:
        raise BenchError(f"--limit must be >= 1, got {limit}")
    by_category: dict[str, list[str]] = {}
    seen: set[str] = set()
    for row in rows:
        if row.id not in seen:
            seen.add(row.id)
            by_category.setdefault(row.category, []).append(row.id)
    chosen: set[str] = set()
    queues = [list(ids) for ids in by_category.values()]
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.add(queue.pop(0))
    return [r for r in rows if r.id in chosen]
