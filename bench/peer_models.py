"""Schedule MODELS of two peers, run against the benchmark's IMDS simulator.

These are not the real tools: they are small coroutines that poll the simulator with the
cadence and request pattern the peers document, and "render" what they saw. Every output
that shows them says MODEL.

* cloud-init 26.2 hotplug on EC2, the retry of PR #5995 (25.1), unchanged since (FACTS.md,
  second round; 26.2 also dropped the udev ``remove`` action, which a late IPv6 does not
  need): at the udev event, then again 5 s after the
  previous application ended, for as long as the next one would start within 30 s of the
  event (FACTS.md measured 26.2: six applications ~5.14 s apart, ~293 requests). Each
  application is one full metadata crawl of CRAWL_REQUESTS requests (a token PUT, the
  meta-data tree, the ``network/`` tree of the primary ENI and of this ENI) and renders
  exactly what that crawl saw: complete when it saw the IPv6. Paths of the crawl that the
  simulator does not serve (ami-id, placement/, ...) answer 404; they count, nothing more.
  Real cloud-init also spends ~0.1-0.8 s processing per application (FACTS.md: IPv6
  rendered +4.9/+1.8/+1.1 s after it appeared for D = 1/4/10 s); the model renders as soon
  as its crawl ends, which flatters it slightly.
* amazon-ec2-net-utils 2.7.7, the v2 design (FACTS.md, second round: drop-ins under
  ``70-IFACE.network.d``, an IPv6 default route via the RA in the ENI's table since 2.4.0;
  on a refresh ``eni.conf`` is not rebuilt, so the late IPv6's subnet route stays missing)
  (policy-routes@.service at the udev event; refresh-policy-routes@
  .timer: OnActiveSec=30, OnUnitInactiveSec=60, RandomizedDelaySec=5, i.e. a refresh
  30 s + U(0, 5) s after the start, then 60 s + U(0, 5) s after the previous refresh ended).
  Each run reads what lib.sh reads: a token, ``mac``, ``device-number``, on the first run
  ``interface-id`` and ``device-number`` again (altnames), ``local-ipv4s`` and
  ``ipv4-prefix`` (IPv4 rules), ``ipv6s`` and ``ipv6-prefix`` only when the interface holds
  a global IPv6 (IPv6 rules), ``local-ipv4s`` (aliases); ``get_meta`` retries a failing key
  up to 10 times back to back (the prefixes once). The interface's .network file, which
  carries the per-ENI routes, is written by the first run only (``create_interface_config``
  returns early when it exists), so, as FACTS.md says, a late IPv6 gets its policy rules
  at the next refresh but its subnet route only at the next start (a reboot): the model
  reports "partial" then, never "complete". The model takes the interface to hold its
  global IPv6 from the moment IMDS lists it (no DHCPv6/RA delay): the tool's best case.

Run as ``python -m bench.peer_models`` inside the simulator's namespace: it prints
``ready``, reads one JSON job line on stdin ({"imds": URL, "primary": MAC, "nics": [...]}),
runs every model until its window ends and prints one JSON result line.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

CLOUD_INIT = "cloud-init 26.2 hotplug (MODEL)"
NET_UTILS = "amazon-ec2-net-utils 2.7.7 (MODEL)"
MODELS = (CLOUD_INIT, NET_UTILS)

#: cloud-init: requests per full crawl (FACTS.md: ~49), pause between applications, window.
CRAWL_REQUESTS = 49
CI_RETRY_PAUSE = 5.0
CI_RETRY_WINDOW = 30.0
#: amazon-ec2-net-utils timer (refresh-policy-routes@.timer).
NU_FIRST_REFRESH = 30.0
NU_REFRESH = 60.0
NU_RANDOM_DELAY = 5.0
NU_GET_TRIES = 10

MACS = "meta-data/network/interfaces/macs/"
#: Top-level meta-data paths a real EC2 crawl walks besides network/ (the simulator answers
#: most of them 404); the crawl takes as many as it needs to reach CRAWL_REQUESTS.
FILLER = (
    "meta-data/ami-id",
    "meta-data/ami-launch-index",
    "meta-data/ami-manifest-path",
    "meta-data/block-device-mapping/",
    "meta-data/block-device-mapping/ami",
    "meta-data/block-device-mapping/root",
    "meta-data/events/",
    "meta-data/events/maintenance/",
    "meta-data/events/maintenance/history",
    "meta-data/events/maintenance/scheduled",
    "meta-data/hostname",
    "meta-data/identity-credentials/",
    "meta-data/instance-action",
    "meta-data/instance-id",
    "meta-data/instance-life-cycle",
    "meta-data/instance-type",
    "meta-data/local-hostname",
    "meta-data/local-ipv4",
    "meta-data/mac",
    "meta-data/metrics/vhostmd",
    "meta-data/placement/",
    "meta-data/placement/availability-zone",
    "meta-data/placement/availability-zone-id",
    "meta-data/placement/region",
    "meta-data/profile",
    "meta-data/public-keys/",
    "meta-data/reservation-id",
    "meta-data/security-groups",
    "meta-data/services/domain",
    "meta-data/services/partition",
    "meta-data/system",
    "dynamic/instance-identity/document",
    "user-data",
)


@dataclass
class Render:
    """One application (cloud-init) or run (ec2-net-utils) and what it left configured."""

    t: float
    #: "incomplete" (no IPv6), "partial" (IPv6 rules but no IPv6 subnet route), "complete"
    state: str
    requests: int


@dataclass
class ModelNic:
    tool: str
    mac: str
    delay: float
    #: Wall-clock time the NIC was added to the simulator (= the udev event for a model).
    t0: float
    ipv6: str
    end: float
    renders: list[Render] = field(default_factory=list)
    #: (wall time the request was sent, path under /latest/, HTTP status; 0 = no answer)
    requests: list[tuple[float, str, int]] = field(default_factory=list)

    @property
    def appeared(self) -> float:
        return self.t0 + self.delay


class Imds:
    """A bare IMDSv2 client that records every request against one model NIC."""

    def __init__(self, session: aiohttp.ClientSession, base: str, nic: ModelNic) -> None:
        self._session = session
        self._base = base
        self._nic = nic
        self.token = ""
        self.sent = 0

    async def put_token(self, ttl: int) -> None:
        status, body = await self._call("PUT", "api/token", {
            "X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})  # fmt: skip
        self.token = body.strip() if status == 200 else ""

    async def get(self, path: str, tries: int = 1) -> str | None:
        """Body on 200; None after TRIES failed attempts (curl -f retried back to back)."""
        for _ in range(tries):
            status, body = await self._call("GET", path, {"X-aws-ec2-metadata-token": self.token})
            if status == 200:
                return body
        return None

    async def _call(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
        sent = time.time()
        self.sent += 1
        status, body = 0, ""
        try:
            async with self._session.request(method, f"{self._base}/latest/{path}",
                                             headers=headers) as resp:  # fmt: skip
                status, body = resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            pass
        self._nic.requests.append((sent, path, status))
        return status, body


async def _sleep_until(when: float) -> None:
    pause = when - time.time()
    if pause > 0:
        await asyncio.sleep(pause)


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


async def _crawl(imds: Imds, nic: ModelNic, primary: str) -> bool:
    """One cloud-init crawl of exactly CRAWL_REQUESTS requests; True if it saw the IPv6."""
    before = imds.sent
    await imds.put_token(21600)
    await imds.get("meta-data/")
    for path in ("meta-data/network/", "meta-data/network/interfaces/", MACS):
        await imds.get(path)
    saw_ipv6 = False
    for mac in (primary, nic.mac):
        keys = [k for k in _lines(await imds.get(f"{MACS}{mac}/")) if not k.endswith("/")]
        for key in keys:
            body = await imds.get(f"{MACS}{mac}/{key}")
            if mac == nic.mac and key == "ipv6s" and nic.ipv6 in _lines(body):
                saw_ipv6 = True
    for path in FILLER[: max(0, CRAWL_REQUESTS - (imds.sent - before))]:
        await imds.get(path)
    return saw_ipv6


async def cloud_init(imds: Imds, nic: ModelNic, primary: str) -> None:
    await _sleep_until(nic.t0)
    while time.time() < nic.end:
        before = imds.sent
        saw = await _crawl(imds, nic, primary)
        nic.renders.append(
            Render(time.time(), "complete" if saw else "incomplete", imds.sent - before)
        )
        if time.time() + CI_RETRY_PAUSE - nic.t0 > CI_RETRY_WINDOW:
            return
        await asyncio.sleep(CI_RETRY_PAUSE)


async def net_utils(imds: Imds, nic: ModelNic, rng: random.Random) -> None:
    await _sleep_until(nic.t0)
    route6 = False  # the IPv6 subnet route, fixed by the first run's .network file
    rules6 = False
    first = True
    next_run = nic.t0
    while next_run < nic.end:
        await _sleep_until(next_run)
        before = imds.sent
        has_v6 = time.time() >= nic.appeared  # the interface holds its global IPv6
        await imds.put_token(60)
        mac = nic.mac
        await imds.get("meta-data/mac", NU_GET_TRIES)
        await imds.get(f"{MACS}{mac}/device-number", NU_GET_TRIES)
        if first:
            route6 = has_v6
            await imds.get(f"{MACS}{mac}/interface-id", NU_GET_TRIES)
            await imds.get(f"{MACS}{mac}/device-number", NU_GET_TRIES)
        await imds.get(f"{MACS}{mac}/local-ipv4s", NU_GET_TRIES)
        await imds.get(f"{MACS}{mac}/ipv4-prefix", 1)
        if has_v6:
            addresses = _lines(await imds.get(f"{MACS}{mac}/ipv6s", NU_GET_TRIES))
            await imds.get(f"{MACS}{mac}/ipv6-prefix", 1)
            rules6 = nic.ipv6 in addresses
        await imds.get(f"{MACS}{mac}/local-ipv4s", NU_GET_TRIES)
        state = "incomplete"
        if rules6:
            state = "complete" if route6 else "partial"
        ended = time.time()
        nic.renders.append(Render(ended, state, imds.sent - before))
        pause = NU_FIRST_REFRESH if first else NU_REFRESH
        # OnActiveSec counts from the timer's activation (the start), OnUnitInactiveSec
        # from the end of the previous refresh.
        next_run = (nic.t0 if first else ended) + pause + rng.uniform(0, NU_RANDOM_DELAY)
        first = False


async def run_job(job: dict[str, Any]) -> list[ModelNic]:
    nics = [ModelNic(**spec) for spec in job["nics"]]
    rng = random.Random(job.get("seed"))
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        tasks = []
        for nic in nics:
            imds = Imds(session, job["imds"], nic)
            if nic.tool == CLOUD_INIT:
                tasks.append(cloud_init(imds, nic, job["primary"]))
            elif nic.tool == NET_UTILS:
                tasks.append(net_utils(imds, nic, random.Random(rng.random())))
            else:
                raise ValueError(f"unknown model {nic.tool!r}")
        await asyncio.gather(*tasks)
    return nics


async def _main() -> int:
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if not line.strip():
        return 1
    nics = await run_job(json.loads(line))
    print(json.dumps([asdict(nic) for nic in nics]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
