"""The netplan appliers: ``netplan generate`` in a scratch tree, our NICs' output installed.

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

With networkd as netplan's backend, the apply ends as our own ``.network`` files' does (one
``networkctl reload``, apply.py); with NetworkManager, netplan's profiles are activated as
our keyfiles are (apply_nm.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from nicreconciled.apply import TIMEOUT, BatchApplier, Change, Outcome
from nicreconciled.apply_nm import NmActivation
from nicreconciled.errors import ApplyError, UnsafePathError
from nicreconciled.model import mac_to_key
from nicreconciled.system import fs, proc

#: Where networkd reads runtime ``.network`` files (and netplan writes them).
NETWORKD_DIR: Final = Path("run/systemd/network")
#: Where NetworkManager reads runtime keyfiles (and netplan writes its NetworkManager ones).
NM_DIR: Final = Path("run/NetworkManager/system-connections")
NETPLAN_NM_DIR: Final = Path("/") / NM_DIR
#: netplan reads ``*.yaml`` from these, in this order of precedence (lowest first).
NETPLAN_CONFIG_DIRS: Final = (Path("lib/netplan"), Path("etc/netplan"), Path("run/netplan"))


class _NetplanApplier(BatchApplier):
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


def netplan_nm_connection_id(mac: str) -> str:
    """The profile id netplan gives our definition ``nicr-<key>`` on the NetworkManager backend."""
    return f"netplan-nicr-{mac_to_key(mac)}"


class NetplanNetworkManagerApplier(_NetplanApplier, NmActivation):
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
