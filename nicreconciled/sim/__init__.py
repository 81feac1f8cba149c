"""The embedded IMDSv2 simulator used by `demo`, the tests and the benchmarks.

In-process: ``ImdsSim`` (``start()``/``stop()``, ``add_nic()``, ``set_fault()``, ...).
Out of process: ``python -m nicreconciled.sim`` with a JSON control API on a unix socket,
driven by ``SimClient``.
"""

from __future__ import annotations

import importlib
from typing import Any

from nicreconciled.sim.client import SimClient, SimControlError
from nicreconciled.sim.imds import FAULTS, LISTED_404, ImdsSim, NicSpec

#: cloud -> "module:Class" of its simulator (a FaultyServer that is a control.Simulated),
#: imported when asked for: one line per cloud. A simulator that can stand for a NIC of the
#: lab (``nicreconciled.lab``) also has ``lab_spec(plan) -> spec``: the body of its
#: ``POST /nics`` (and ``PATCH /nics/{mac}``) for a cloud-neutral plan (``Eni.plan_dict``).
SIMULATORS: dict[str, str] = {
    "ec2": "nicreconciled.sim.imds:ImdsSim",
    "cloudstack": "nicreconciled.sim.cloudstack:VrSim",
    "oci": "nicreconciled.sim.oci:OciSim",
    "openstack": "nicreconciled.sim.openstack:OpenStackSim",
    "gce": "nicreconciled.sim.gce:GceSim",
    "azure": "nicreconciled.sim.azure:AzureSim",
    "aliyun": "nicreconciled.sim.aliyun:AliyunSim",
}


def simulator_class(cloud: str) -> Any:
    """The registered simulator class of CLOUD (KeyError for an unknown cloud)."""
    module, _, name = SIMULATORS[cloud].partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "FAULTS",
    "LISTED_404",
    "SIMULATORS",
    "ImdsSim",
    "NicSpec",
    "SimClient",
    "SimControlError",
    "simulator_class",
]
