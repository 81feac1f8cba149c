"""A rejected document never changes a file: a real Reconciler writes a NIC's file from a
good document, then its source answers with a spoilt copy (``strategies.spoilt_documents``)
that the cloud's real parser rejects; after several failed polls the file is byte for byte
what it was, untouched, nothing was applied again, and the NIC's status names the error."""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, seed
from hypothesis import strategies as st

from nicreconciled.errors import MetadataError
from nicreconciled.model import Observation, normalize_mac
from nicreconciled.reconciler import Context, Reconciler
from nicreconciled.stability import Policy
from nicreconciled.status import StatusStore
from tests.fuzz.properties import CLOUDS, RENDERERS, parse
from tests.fuzz.settings import RECONCILER_EXAMPLES, SEED, fuzz_settings
from tests.fuzz.strategies import GOOD, spoilt_documents

FAST = Policy(initial_interval=0.01, max_interval=0.05, probe_interval=0.01, deadline=2.0)
#: Failed polls on the spoilt document before the file is compared.
FAILED_POLLS = 3


class ParsingSource:
    """A source whose answer is the cloud's real parser on the document of the moment."""

    def __init__(self, cloud: str, document: Any) -> None:
        self.name = cloud
        self.document = document
        self.rejected = 0

    async def detect(self) -> bool:
        return True

    async def fetch(self, mac: str) -> Observation:
        try:
            return parse(self.name, self.document)
        except MetadataError:
            self.rejected += 1
            raise

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        return {}

    async def close(self) -> None:
        return None


class RecordingApplier:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        self.calls.append(path.name)


async def until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 (the reconciler offers no event)
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


async def good_then_rejected(cloud: str, bad: Any, renderer: Any, tmp: Path) -> None:
    source = ParsingSource(cloud, GOOD[cloud])
    applier = RecordingApplier()
    ctx = Context(
        boot_id="boot-1",
        source=source,  # type: ignore[arg-type]
        renderer=renderer,
        applier=applier,  # type: ignore[arg-type]
        policy=FAST,
        output_dir=tmp / "out",
        status=StatusStore(tmp / "state"),
        resync_interval=0.02,
        rng=random.Random(3),
    )
    mac = normalize_mac(GOOD[cloud].mac)
    rec = Reconciler(ctx, mac, "eth1")
    target = tmp / "out" / renderer.filename(mac)
    task = asyncio.create_task(rec.run())
    try:
        await until(lambda: rec.converged and applier.calls, "the good document's file")
        before, stat, applied = target.read_bytes(), target.stat(), list(applier.calls)
        source.document = bad
        await until(lambda: source.rejected >= FAILED_POLLS, "polls of the rejected document")
        assert target.read_bytes() == before, "a rejected document changed the file"
        assert target.stat().st_mtime_ns == stat.st_mtime_ns, "the file was rewritten"
        assert target.stat().st_ino == stat.st_ino, "the file was replaced"
        assert applier.calls == applied, "something was applied for a rejected document"
        assert rec.status.last_error, "the NIC's status does not name the error"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("cloud", CLOUDS)
@seed(SEED)
@fuzz_settings(RECONCILER_EXAMPLES)
@given(data=st.data())
def test_a_rejected_document_never_changes_a_written_file(cloud: str, data: st.DataObject) -> None:
    bad = data.draw(spoilt_documents(cloud), label="spoilt document")
    try:
        parse(cloud, bad)
    except MetadataError:
        pass
    else:
        assume(False)  # accepted (a harmless change): not this property's case
    name = data.draw(st.sampled_from(sorted(RENDERERS)), label="renderer")
    with tempfile.TemporaryDirectory(prefix="nicr-fuzz-") as tmp:
        asyncio.run(good_then_rejected(cloud, bad, RENDERERS[name], Path(tmp)))
