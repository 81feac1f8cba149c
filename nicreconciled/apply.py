"""Load changed files into the network stack: one applier at a time, only the changed NICs.

Every reconciler hands its change to the one applier of the daemon and awaits the outcome
for its own NIC. Applies are serialized by one lock, and the changes that arrive while an
apply runs are merged into the next one (a burst of NICs at boot costs one ``netplan
generate`` and one ``networkctl reload``, not one per NIC). A failure is an ``ApplyError``
for the NICs it concerns: the reconciler logs it and retries later, and a half-applied
sequence is simply run again.

Why the netplan appliers never run ``netplan generate`` on the live tree (measured on a
real systemd-networkd, netplan 0.106, in the project's lab):

* ``netplan generate`` deletes every file it generated before and writes them all again.
  networkd decides what changed by inode and mtime, not content, so the next ``networkctl
  reload`` reconfigures *every* netplan-configured link: the primary NIC's DHCP lease is
  dropped and re-requested and its address disappears for 50-250 ms on each hot-plug.
* Two generates at once, or a reload between the delete and the write, can leave networkd
  with no file at all for another NIC.

So they generate into a scratch tree (``--root-dir``, with a copy of every netplan
configuration file, so our definitions are rendered exactly as a full generate would), then
install only our own NICs' output (``10-netplan-nicr-<key>.*`` for networkd,
``netplan-nicr-<key>.nmconnection`` for NetworkManager) with the same atomic
write-if-changed as our own files, and remove what a removed NIC left. A scratch tree's
name carries the daemon's pid; the trees of a daemon killed mid-generate are removed at the
next start (``remove_stale_scratch``). Nothing else in
``/run/systemd/network`` or ``/run/NetworkManager`` is touched; global outputs (udev rules,
OVS units) are left to netplan's own boot-time generator.

networkd: one ``networkctl reload`` per apply. networkd re-reads its files and reconfigures
exactly the links whose ``.network`` file changed on disk (a link it left unmanaged included),
so no per-NIC ``networkctl reconfigure`` is needed; ``reconfigure`` does not re-read files and
would restart the NIC's DHCP a second time.

NetworkManager facts the NetworkManager appliers rely on:

* "NetworkManager does not monitor changes to connection files by default" (nmcli(1)):
  a written file is picked up by ``nmcli connection load FILE...`` (D-Bus
  ``Settings.LoadConnections``), and loading does not activate it.
* ``load`` of a path that no longer exists makes NetworkManager forget the profile it had
  loaded from that path (keyfile plugin, NetworkManager >= 1.20: ENOENT means "unload").
  So a removal is one ``load`` of the deleted path, never ``nmcli connection reload``,
  which re-reads every profile on the host.
* ``nmcli connection up`` is given the profile, not the interface name: our profile is
  bound to the NIC's MAC, so a rename between our sysfs read and nmcli's run cannot make
  the call fail or pick a stale name. ``--wait 0`` returns as soon as NetworkManager
  accepted the activation ("no suitable device" still fails the call), so a slow DHCP
  server cannot hold the applier for nmcli's default 90 s.
* ``nmcli device reapply`` is not used to apply a change: it acts on whatever profile is
  active on the device, possibly another tool's, and it needs the unstable interface name.
  It is what a heal uses, once the device is seen running our profile (below).

Heals (``Applier.heal``, keeper.py). Neither manager restores an address, rule or route that
another program deleted (measured in the lab, networkd 252 and NetworkManager 1.42: not
within 5 s), and a reload does nothing for a link whose file did not change. What restores
exactly one link, without touching another: networkd ``networkctl reconfigure IFNAME``
(re-applies the link's ``.network``; measured 61 ms) and NetworkManager ``nmcli device
reapply IFNAME`` (re-applies the active profile's settings; 19 ms), when the profile active
on the device is ours, else ``nmcli connection up`` of our profile. A heal takes the same
lock as the applies: it never runs in the middle of a batch, and never for a link whose
apply is queued behind it (the batch then re-applies it anyway).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import structlog

from nicreconciled.errors import ApplyError, UnsafePathError
from nicreconciled.model import mac_to_key
from nicreconciled.render.networkmanager import connection_uuid
from nicreconciled.system import fs, proc

log = structlog.get_logger(__name__)

TIMEOUT = 30.0

#: Where networkd reads runtime ``.network`` files (and netplan writes them).
NETWORKD_DIR: Final = Path("run/systemd/network")
#: Where NetworkManager reads runtime keyfiles (and netplan writes its NetworkManager ones).
NM_DIR: Final = Path("run/NetworkManager/system-connections")
NETPLAN_NM_DIR: Final = Path("/") / NM_DIR
#: netplan reads ``*.yaml`` from these, in this order of precedence (lowest first).
NETPLAN_CONFIG_DIRS: Final = (Path("lib/netplan"), Path("etc/netplan"), Path("run/netplan"))


@dataclass(frozen=True)
class Change:
    """One NIC's change: PATH was just written (or removed); IFNAME None = the NIC is gone."""

    mac: str
    path: Path
    ifname: str | None

    @property
    def written(self) -> bool:
        return self.path.exists()


class Applier(Protocol):
    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        """Load PATH, just written (or removed) for MAC; raises ApplyError on failure."""
        ...

    async def heal(self, *, mac: str, ifname: str) -> None:
        """Make the network stack re-apply MAC's loaded configuration to IFNAME (what another
        program deleted comes back); raises ApplyError on failure."""
        ...


#: Per NIC of a batch: None if applied, else why not.
Outcome = dict[str, ApplyError | None]


@dataclass
class _Pending:
    change: Change
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class _BatchApplier:
    """Serializes applies and merges the changes that queue up behind a running one."""

    def __init__(self, runner: proc.Runner = proc.run) -> None:
        self._run = runner
        self._lock = asyncio.Lock()
        self._queue: dict[str, _Pending] = {}

    async def apply(self, *, mac: str, path: Path, ifname: str | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Nobody may be left awaiting it (a cancelled reconciler): never warn about that.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        pending = self._queue.setdefault(mac, _Pending(Change(mac, path, ifname)))
        pending.change = Change(mac, path, ifname)  # the latest request for a NIC wins
        pending.waiters.append(waiter)
        async with self._lock:
            if not waiter.done():
                batch, self._queue = self._queue, {}
                await self._process(batch)
        await waiter

    async def _process(self, batch: dict[str, _Pending]) -> None:
        changes = [p.change for p in batch.values()]
        try:
            outcome = await self.apply_batch(changes)
        except ApplyError as exc:
            outcome = dict.fromkeys(batch, exc)
        except BaseException:
            # Cancelled mid-apply (the daemon stops): the others retry, nothing is lost.
            _settle(batch, dict.fromkeys(batch, ApplyError("apply interrupted")))
            raise
        log.debug(
            "apply_batch", nics=len(changes), failed=sum(e is not None for e in outcome.values())
        )
        _settle(batch, outcome)

    async def apply_batch(self, changes: Sequence[Change]) -> Outcome:
        raise NotImplementedError

    async def heal(self, *, mac: str, ifname: str) -> None:
        async with self._lock:
            if mac in self._queue:
                return  # an apply of this NIC is queued: it reloads the NIC anyway
            await self._heal(mac, ifname)

    async def _heal(self, mac: str, ifname: str) -> None:
        raise NotImplementedError

    async def _step(self, *argv: str) -> None:
        done = await self._run(argv, timeout=TIMEOUT)
        if not done.ok:
            raise ApplyError(done.summary())

    async def _each(self, changes: Iterable[Change], outcome: Outcome, *argv: str) -> None:
        """Run ARGV + selector for each NIC; a failure is that NIC's alone."""
        for change in changes:
            try:
                await self._step(*argv, *self._selector(change))
            except ApplyError as exc:
                outcome[change.mac] = exc

    def _selector(self, change: Change) -> tuple[str, ...]:
        raise NotImplementedError


def _settle(batch: dict[str, _Pending], outcome: Outcome) -> None:
    for mac, pending in batch.items():
        error = outcome.get(mac)
        for waiter in pending.waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


class _NetplanApplier(_BatchApplier):
    """``netplan generate`` into a scratch tree; our NICs' output installed, nothing else."""

    #: Where the backend reads the files (relative to root) and the mode netplan gives them.
    backend_dir: Path
    backend_mode: int

    def __init__(
        self,
        runner: proc.Runner = proc.run,
        *,
        root: Path = Path("/"),
        netplan: str = "netplan",
        generate: Sequence[str] = (),
    ) -> None:
        """GENERATE: the generator's argv (system/netplan.generate_command); () runs the
        front end NETPLAN as ``NETPLAN generate``."""
        super().__init__(runner)
        self.root = root
        self._generate_argv = tuple(generate) or (netplan, "generate")

    def owned(self, mac: str) -> tuple[str, str]:
        """(prefix, suffix) of the backend files netplan generates for our definition."""
        raise NotImplementedError

    async def _generate(self, changes: Sequence[Change]) -> set[str]:
        """Generate in scratch, install our NICs' files; the MACs whose files changed."""
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=scratch_prefix()))
        try:
            await asyncio.to_thread(self._copy_config, scratch)
            await self._step(*self._generate_argv, "--root-dir", str(scratch))
            return await asyncio.to_thread(self._install, scratch, changes)
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    def _copy_config(self, scratch: Path) -> None:
        """Every netplan configuration file, as netplan reads it (symlinks followed)."""
        for sub in NETPLAN_CONFIG_DIRS:
            names = _listing(self.root / sub, ".yaml")
            if names:
                (scratch / sub).mkdir(mode=0o700, parents=True)
            for name in names:
                try:
                    shutil.copyfile(self.root / sub / name, scratch / sub / name)
                except FileNotFoundError:
                    continue  # removed since the listing
                except OSError as exc:
                    raise ApplyError(f"cannot read {self.root / sub / name}: {exc}") from exc
                (scratch / sub / name).chmod(0o600)

    def _install(self, scratch: Path, changes: Sequence[Change]) -> set[str]:
        live, generated = self.root / self.backend_dir, scratch / self.backend_dir
        changed: set[str] = set()
        new = _listing(generated, "")
        for change in changes:
            prefix, suffix = self.owned(change.mac)
            ours = [n for n in new if n.startswith(prefix) and n.endswith(suffix)]
            try:
                for name in ours:
                    text = fs.read_file(generated, name) or ""
                    if fs.write_if_changed(live, name, text, self.backend_mode):
                        changed.add(change.mac)
                for name in fs.list_names(live, prefix, suffix):
                    if name not in ours and fs.remove_file(live, name):
                        changed.add(change.mac)
            except (OSError, UnsafePathError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise ApplyError(f"install into {live}: {reason}") from exc
        return changed


#: ``netplan generate``'s scratch trees: ``<tmp>/nicreconciled-netplan.<pid>.<random>``.
SCRATCH_PREFIX: Final = "nicreconciled-netplan."
_SCRATCH = re.compile(re.escape(SCRATCH_PREFIX) + r"(?:(\d+)\.)?[A-Za-z0-9_]+")
#: A scratch tree with no pid in its name (0.2.0 and before) is stale when this old.
UNTAGGED_STALE_AFTER = 2 * TIMEOUT


def scratch_prefix() -> str:
    return f"{SCRATCH_PREFIX}{os.getpid()}."


def remove_stale_scratch(tmp: Path | None = None) -> list[Path]:
    """Remove the scratch trees a killed daemon left in TMP (the temp directory); the
    removed paths. A tree is stale when the process its name carries is gone (or is this
    one, which has made none yet: a PID namespace may give a restarted daemon the same pid);
    an untagged one when older than UNTAGGED_STALE_AFTER. Only trees this user owns."""
    directory = Path(tmp if tmp is not None else tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _SCRATCH.fullmatch(entry.name)
        if match is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            continue
        if match.group(1) is None:
            stale = time.time() - st.st_mtime > UNTAGGED_STALE_AFTER
        else:
            stale = int(match.group(1)) == os.getpid() or not _alive(int(match.group(1)))
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.lexists(entry.path):
                removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: someone else's process
    return True


def _listing(directory: Path, suffix: str) -> list[str]:
    try:
        return fs.list_names(directory, "", suffix)
    except OSError as exc:
        raise ApplyError(f"cannot read {directory}: {exc.strerror}") from exc


class NetplanNetworkdApplier(_NetplanApplier):
    """netplan on systemd-networkd: scratch generate, install ours, one ``networkctl reload``."""

    backend_dir = NETWORKD_DIR
    backend_mode = 0o644  # as netplan writes them: networkd runs as systemd-network

    def owned(self, mac: str) -> tuple[str, str]:
        return (f"10-netplan-nicr-{mac_to_key(mac)}.", "")

    async def apply_batch(self, changes: Sequence[Change]) -> Outcome:
        await self._generate(changes)
        # Always: a file installed by an apply that was interrupted before its reload is
        # loaded now. Links whose files did not change are not touched by networkd.
        await self._step("networkctl", "reload")
        return dict.fromkeys((c.mac for c in changes), None)

    async def _heal(self, mac: str, ifname: str) -> None:
        await self._step("networkctl", "reconfigure", ifname)


class NetworkdApplier(_BatchApplier):
    """Our own ``.network`` files (``NetworkdRenderer``): one ``networkctl reload`` per batch.

    The files are written straight into a directory networkd reads (``/run/systemd/network``
    by default), so there is nothing to generate or install: the reload makes networkd
    re-read its files and reconfigure exactly the links whose file changed; a link whose
    file was removed (its NIC detached) is dropped by the same reload. Always run, even when
    every change of the batch was a no-op: a file written by an apply that was interrupted
    before its reload is loaded now.
    """

    async def apply_batch(self, changes: Sequence[Change]) -> Outcome:
        await self._step("networkctl", "reload")
        return dict.fromkeys((c.mac for c in changes), None)

    async def _heal(self, mac: str, ifname: str) -> None:
        await self._step("networkctl", "reconfigure", ifname)


class _NmActivation(_BatchApplier):
    """``nmcli connection up`` only where NetworkManager will not activate on its own.

    Measured in the lab: ``load`` of a new profile (``autoconnect=true``) makes
    NetworkManager auto-activate it at once; an ``up`` right after replaces that activation
    ("new-activation"), which deletes the NIC's addresses and restarts its DHCP. So a profile
    that was not active before the load is left to autoconnect (given AUTOCONNECT_WAIT to
    start); one that was active is re-activated, since NetworkManager keeps running the old
    settings of an active profile until then.
    """

    #: nmcli's field for the selector (``UUID`` or ``NAME``) and the selector word.
    field: str
    selector: str

    async def _active(self) -> set[str]:
        argv = ("nmcli", "-g", self.field, "connection", "show", "--active")
        done = await self._run(argv, timeout=TIMEOUT)
        if not done.ok:
            raise ApplyError(done.summary())
        return {line.strip() for line in done.stdout.splitlines() if line.strip()}

    async def _activate(self, changes: Sequence[Change], before: set[str]) -> Outcome:
        outcome: Outcome = dict.fromkeys((c.mac for c in changes), None)
        if not changes:
            return outcome
        fresh = [c for c in changes if self._selector(c)[0] not in before]
        waited = 0.0
        while fresh and waited < AUTOCONNECT_WAIT:
            await asyncio.sleep(AUTOCONNECT_POLL)
            waited += AUTOCONNECT_POLL
            active = await self._active()
            fresh = [c for c in fresh if self._selector(c)[0] not in active]
        stale = [c for c in changes if self._selector(c)[0] in before]
        up = [c for c in changes if c in stale or c in fresh]
        await self._each(up, outcome, "nmcli", "--wait", "0", "connection", "up", self.selector)
        return outcome

    async def _heal(self, mac: str, ifname: str) -> None:
        """``device reapply`` when our profile is the one active on IFNAME, else ``up``."""
        change = Change(mac, Path(), ifname)
        argv = ("nmcli", "-g", f"{self.field},DEVICE", "connection", "show", "--active")
        done = await self._run(argv, timeout=TIMEOUT)
        if not done.ok:
            raise ApplyError(done.summary())
        ours = self._selector(change)[0]
        # -g escapes ":" inside values as "\:"; neither a UUID, our ids nor a name has one.
        active = {tuple(line.split(":", 1)) for line in done.stdout.splitlines() if ":" in line}
        if (ours, ifname) in active:
            await self._step("nmcli", "device", "reapply", ifname)
        else:
            await self._step("nmcli", "--wait", "0", "connection", "up", self.selector, ours)


#: How long a newly loaded profile is given to be auto-activated before ``up`` is asked.
AUTOCONNECT_WAIT = 1.0
AUTOCONNECT_POLL = 0.05


class NetworkManagerApplier(_NmActivation):
    """Our own keyfiles (``NetworkManagerRenderer``): one ``load`` for all, then activation."""

    field, selector = "UUID", "uuid"

    async def apply_batch(self, changes: Sequence[Change]) -> Outcome:
        # Decided before loading: a removal must never be followed by an activation.
        up = [c for c in changes if c.ifname is not None and c.written]
        before = await self._active() if up else set()
        await self._step("nmcli", "connection", "load", *(str(c.path) for c in changes))
        outcome: Outcome = dict.fromkeys((c.mac for c in changes), None)
        outcome.update(await self._activate(up, before))
        return outcome

    def _selector(self, change: Change) -> tuple[str, ...]:
        return (connection_uuid(change.mac),)


def netplan_nm_connection_id(mac: str) -> str:
    """The profile id netplan gives our definition ``nicr-<key>`` on the NetworkManager backend."""
    return f"netplan-nicr-{mac_to_key(mac)}"


class NetplanNetworkManagerApplier(_NetplanApplier, _NmActivation):
    """netplan YAML whose definition uses ``renderer: NetworkManager``.

    netplan writes ``netplan-<definition id>.nmconnection``; we install and load only ours.
    netplan 0.106 writes no ``uuid=`` (NetworkManager derives one from the path), so
    activation names the profile by its id, which netplan takes from our definition id and
    is therefore ours alone.
    """

    backend_dir = NM_DIR
    backend_mode = 0o600  # NetworkManager ignores keyfiles readable by others
    field, selector = "NAME", "id"

    def owned(self, mac: str) -> tuple[str, str]:
        return (netplan_nm_connection_id(mac), ".nmconnection")

    async def apply_batch(self, changes: Sequence[Change]) -> Outcome:
        await self._generate(changes)
        live = self.root / self.backend_dir
        paths = [live / "".join(self.owned(c.mac)) for c in changes]
        up = [c for c, p in zip(changes, paths, strict=True) if c.ifname and p.exists()]
        before = await self._active() if up else set()
        await self._step("nmcli", "connection", "load", *map(str, paths))
        outcome: Outcome = dict.fromkeys((c.mac for c in changes), None)
        outcome.update(await self._activate(up, before))
        return outcome

    def _selector(self, change: Change) -> tuple[str, ...]:
        return (netplan_nm_connection_id(change.mac),)
