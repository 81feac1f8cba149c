"""The fuzz tests' hypothesis settings: deterministic, with their example database in the repo.

``@seed(SEED)`` makes every run draw the same documents (until hypothesis, Python or a
strategy changes); failures found are saved in ``tests/fuzz/examples`` and replayed first
on the next run, so a failure found once is tried again until it is fixed (hypothesis drops
an entry once it no longer fails). Budgets are examples per test, chosen so that the whole
``tests/fuzz`` directory runs in about 30 s on two slow cores (``make test``); ``bench/fuzz.py``
runs the same properties over 100,000 documents per cloud.

``deadline=None``: one example may take tens of milliseconds (a 1 MiB document, 600
entries, five renders), and the time of one example says nothing here. ``too_slow`` is
suppressed for the same reason: a document is some fifty draws, which hypothesis's health
check calls slow to generate; that is the point of the composite strategies, not a mistake.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

EXAMPLES = Path(__file__).resolve().parent / "examples"
DATABASE = DirectoryBasedExampleDatabase(str(EXAMPLES))
SEED = 19  # issue 19

#: Documents per cloud for the parser property (each parsed twice).
PARSER_EXAMPLES = 500
#: Documents per cloud whose accepted state is rendered by every renderer.
RENDER_EXAMPLES = 250
#: Any model-valid NicState, through every renderer.
STATE_EXAMPLES = 250
#: Rejected documents per cloud driven through a real Reconciler (a fraction of a second each).
RECONCILER_EXAMPLES = 6


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        database=DATABASE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
