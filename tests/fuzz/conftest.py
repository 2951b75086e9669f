"""The fuzz suite: generated bad and odd inputs through every public surface.

Each case must end in a clear error (a :class:`finesam.errors.FinesamError` whose message
names the problem; exit code 2 and one line on the command line) or a result that is finite
and of the documented shape. ``FUZZ_EXAMPLES=N`` runs N examples per test instead of the
defaults (which keep ``make test`` within a few minutes); the cases run per category are
printed at the end of the session.
"""

from __future__ import annotations

import collections
import os

import pytest

CASES: collections.Counter = collections.Counter()


def examples(default: int) -> int:
    """Examples per hypothesis test: ``$FUZZ_EXAMPLES`` when set, else ``default``."""
    return int(os.environ.get("FUZZ_EXAMPLES", "0")) or default


@pytest.fixture
def count_case():
    """``count_case(category)``: record one generated case (for the per-category totals)."""
    return lambda category: CASES.update([category])


def pytest_terminal_summary(terminalreporter):
    if CASES:
        counts = ", ".join(f"{name} {count}" for name, count in sorted(CASES.items()))
        terminalreporter.write_line(f"fuzz cases run: {sum(CASES.values())} ({counts})")
