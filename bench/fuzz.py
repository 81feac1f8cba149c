"""fuzz: the properties of ``tests/fuzz`` over many documents per cloud (issue 19).

Per cloud, hypothesis draws DOCS documents from the cloud's strategy
(``tests/fuzz/strategies.py``: valid shapes, hostile values, one in ten garbage) inside
``@given`` (generate phase only, no example database), in chunks of CHUNK examples, each
chunk with its own seed: a run keeps every example's choices in memory, so one run of
100,000 would grow for nothing. Each document goes through the parser property
(``tests/fuzz/properties.py``: an Observation or a MetadataError, nothing else; an
accepted state is valid and parsing is pure), and each accepted state through every
renderer twice (deterministic, and the text reads back as what was built).

Figures per cloud: documents, accepted (a state), no state (an Observation without one:
not listed, incomplete), rejected (MetadataError), other exceptions and render failures
(both must be 0: each is a defect, and its first examples are kept in the results),
documents per second (drawing included: hypothesis's drawing is most of the time). A chunk
whose drawing fails (a bug of the strategies, not of the product) is counted, kept and
skipped, so that one such bug does not cost a run of three quarters of an hour. Needs
no root and no network; the ``test`` extras (hypothesis) must be installed.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bench.report import table, verdict

NAME = "fuzz"
DOCS = 100_000
CHUNK = 5_000
SEED = 19
#: Failures kept per cloud and kind (type, message, document or state) in the results.
KEPT = 5


def _fuzz(cloud: str, docs: int) -> dict[str, Any]:
    # Imported here: hypothesis is a test dependency, and `python -m bench` imports every
    # benchmark module to list them.
    from hypothesis import HealthCheck, Phase, given, seed, settings

    from nicreconciled.errors import MetadataError
    from nicreconciled.model import NicState
    from tests.fuzz.properties import parser_property, render_property
    from tests.fuzz.strategies import DOCUMENTS

    counts: Counter[str] = Counter()
    failures: list[dict[str, str]] = []

    def keep(kind: str, exc: BaseException, subject: object) -> None:
        counts[kind] += 1
        if sum(f["kind"] == kind for f in failures) < KEPT:
            failures.append(
                {
                    "kind": kind,
                    "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                    "subject": repr(subject)[:2000],
                }
            )

    def check(doc: object) -> None:
        counts["documents"] += 1
        try:
            result = parser_property(cloud, doc)
        except Exception as exc:  # anything but MetadataError, or a property that failed
            keep("other exceptions", exc, doc)
            return
        if isinstance(result, MetadataError):
            counts["rejected"] += 1
            return
        if result is None:
            counts["no state"] += 1
            return
        counts["accepted"] += 1
        assert isinstance(result, NicState)
        try:
            render_property(result)
        except Exception as exc:
            keep("render failures", exc, result)

    began = time.monotonic()
    done, chunk = 0, 0
    while done < docs:
        size = min(CHUNK, docs - done)
        run = seed(SEED * 1000 + chunk)(
            settings(
                max_examples=size,
                database=None,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(given(DOCUMENTS[cloud])(check))
        )
        try:
            run()
        except Exception as exc:  # a strategy that failed to draw: a bug of tests/fuzz
            keep("strategy errors", exc, f"chunk {chunk} (seed {SEED * 1000 + chunk})")
        done, chunk = done + size, chunk + 1
    elapsed = time.monotonic() - began
    return {
        "cloud": cloud,
        "documents": counts["documents"],
        "accepted": counts["accepted"],
        "no_state": counts["no state"],
        "rejected": counts["rejected"],
        "other_exceptions": counts["other exceptions"],
        "render_failures": counts["render failures"],
        "strategy_errors": counts["strategy errors"],
        "seconds": elapsed,
        "docs_per_s": counts["documents"] / elapsed if elapsed else 0.0,
        "failures": failures,
    }


def run(docs: int = DOCS) -> dict[str, Any]:
    from tests.fuzz.properties import CLOUDS

    print(f"\nfuzz: {docs} documents per cloud through the parser and render properties")
    results = []
    for cloud in CLOUDS:
        result = _fuzz(cloud, docs)
        results.append(result)
        print(
            f"   {cloud}: {result['documents']} documents in {result['seconds']:.0f} s:"
            f" {result['accepted']} accepted, {result['no_state']} no state,"
            f" {result['rejected']} rejected, {result['other_exceptions']} other exceptions,"
            f" {result['render_failures']} render failures"
            + (f", {result['strategy_errors']} chunks lost" if result["strategy_errors"] else ""),
            flush=True,
        )
    print(
        table(
            ["cloud", "documents", "accepted", "no state", "rejected", "other exc.",
             "render fail.", "docs/s"],
            [
                [r["cloud"], r["documents"], r["accepted"], r["no_state"], r["rejected"],
                 r["other_exceptions"], r["render_failures"], round(r["docs_per_s"])]
                for r in results
            ],
        )
    )  # fmt: skip
    for r in results:
        for failure in r["failures"]:
            print(f"   !! {r['cloud']} {failure['kind']}: {failure['error']}")
            print(f"      {failure['subject'][:400]}")
    targets = [
        {
            "name": f"fuzz: {r['cloud']}, exceptions other than MetadataError, render failures",
            "value": float(r["other_exceptions"] + r["render_failures"]),
            "limit": 0,
            "unit": "docs",
            "met": r["other_exceptions"] + r["render_failures"] == 0,
        }
        for r in results
    ]
    for t in targets:
        print(f"   {t['name']}: {t['value']:.0f} (goal 0): {verdict(t['met'])}")
    return {"docs_per_cloud": docs, "chunk": CHUNK, "results": results, "targets": targets}
