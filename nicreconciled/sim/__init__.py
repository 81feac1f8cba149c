"""The embedded IMDSv2 simulator used by `demo`, the tests and the benchmarks.

In-process: ``ImdsSim`` (``start()``/``stop()``, ``add_nic()``, ``set_fault()``, ...).
Out of process: ``python -m nicreconciled.sim`` with a JSON control API on a unix socket,
driven by ``SimClient``.
"""

from __future__ import annotations

from nicreconciled.sim.client import SimClient, SimControlError
from nicreconciled.sim.imds import FAULTS, LISTED_404, ImdsSim, NicSpec

__all__ = ["FAULTS", "LISTED_404", "ImdsSim", "NicSpec", "SimClient", "SimControlError"]
