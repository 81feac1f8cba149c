"""A booted systemd (PID 1 in ``systemd-nspawn --boot``) for the shipped unit and .deb.

Standard library only: the test suite (tests/integration/systemd) imports it, and
packaging/check-deb runs it as a script with Debian's /usr/bin/python3 (``smoke``, below).

The host has no systemd as PID 1 and hybrid cgroups (v1 controllers, cgroup2 at
/sys/fs/cgroup/unified), so the container is started the way that works there:

* the root file system is a Debian 12 ``mmdebstrap --variant=minbase`` tree, built once and
  cached under CACHE_DIR (a ``.tar.zst`` and its extracted tree, each made under a temporary
  name and renamed, under a lock: concurrent builders wait, never see half a tree); every
  container boots it with ``--volatile=overlay``, so the cached tree is never written;
* nspawn runs in a cgroup of its own, made in both the ``systemd`` and ``unified``
  hierarchies (there is no host systemd to make one), and is started with
  ``--register=no --keep-unit``;
* ``--system-call-filter=bpf``: without it nspawn's seccomp filter blocks ``bpf()`` and the
  container's systemd silently drops ``IPAddressDeny=``/``IPAddressAllow=`` (debug log only);
* ``--private-network``: a fresh network namespace per container (addresses and rules would
  outlive a container in a shared one), named with ``ip netns attach`` once PID 1 runs so
  that tests can move NICs into it. Not ``--network-namespace-path`` with a namespace made
  beforehand: nspawn 252 then mounts the container's /sys while still in the host's network
  namespace, so /sys/class/net inside lists the *host's* interfaces and none of the
  container's (the daemon tracked the host's eth0, ifb0 and ifb1, and never saw a NIC
  moved in). ``--capability=CAP_NET_ADMIN`` is spelled out: without it lo stays down and
  systemd-networkd refuses to start (measured with ``--network-namespace-path``);
* ``--console=read-only`` (with ``passive`` PID 1 can hang on a full console).

Commands run inside with ``nsenter -a`` keep every capability and no seccomp filter: what
must run confined has to be a unit (or a probe placed into a unit's cgroup or namespaces).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Suite:
    """A Debian release the package is built for and booted on."""

    name: str
    number: int
    #: The interpreter the package's virtualenv links to (its Depends).
    python: str

    @property
    def deb_suffix(self) -> str:
        """What packaging/build-deb appends to the changelog's version: ``~deb12``."""
        return f"~deb{self.number}"


SUITES = {
    s.name: s for s in (Suite("bookworm", 12, "python3.11"), Suite("trixie", 13, "python3.13"))
}
SUITE = "bookworm"
VARIANT = "minbase"


def packages(suite: str = SUITE) -> tuple[str, ...]:
    """What runs inside: systemd as PID 1, D-Bus, both network stacks the daemon drives
    (with netplan), and everything the .deb depends on, so that ``dpkg -i`` works offline
    inside (Depends: iproute2, libudev1, python3.X, libc6, libgcc-s1, libstdc++6; checked
    against the package by ``missing_depends``)."""
    return (
        "systemd",
        "systemd-sysv",
        "dbus",
        "iproute2",
        "procps",
        "python3",
        SUITES[suite].python,
        "libudev1",
        "libgcc-s1",
        "libstdc++6",
        "netplan.io",
        "network-manager",
        "python3-gi",
    )


PACKAGES = packages()
#: Bump when the way the tree is made changes (the cache key covers it).
LAYOUT = 2  # 2: a machine-id of its own (networkd 257's DHCP needs one)
CACHE_DIR = Path(os.environ.get("NICR_TEST_CACHE", "/var/cache/nicreconciled-tests"))
#: PATH inside (``env -i`` drops the host's, which may hold pyenv shims).
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOT = Path("/sys/fs/cgroup")

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class ContainerError(RuntimeError):
    """Building, booting or driving the container failed; the message says what and why."""


# --- the root file system -------------------------------------------------------------------


def rootfs_key(suite: str = SUITE, names: Sequence[str] | None = None) -> str:
    """The cache key: suite, variant, package list and layout, nothing host-specific."""
    names = packages(suite) if names is None else names
    spec = {"suite": suite, "variant": VARIANT, "packages": sorted(names), "layout": LAYOUT}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    para: dict[str, str] = {}
    last = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if para:
                yield para
            para, last = {}, ""
        elif raw[0].isspace() and last:
            para[last] += " " + raw.strip()
        elif ":" in raw:
            key, _, value = raw.partition(":")
            last = key.strip().lower()
            para[last] = value.strip()


def host_suite(os_release: Path = Path("/etc/os-release")) -> str:
    """The host's Debian release (VERSION_CODENAME), "" when it does not say."""
    with contextlib.suppress(OSError):
        for line in os_release.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "VERSION_CODENAME":
                return value.strip().strip('"')
    return ""


def mirror_lines(suite: str = SUITE, etc: Path = Path("/etc/apt")) -> list[str]:
    """The host's own apt sources for SUITE (and SUITE-updates, SUITE-security) as one-line
    ``deb`` entries for mmdebstrap: the mirrors this machine is known to reach. When the host
    lists none for SUITE (a Debian 12 host and trixie), its own release's entries with the
    release's name replaced: the same mirrors carry every release."""
    lines = _mirror_lines(suite, etc)
    own = host_suite(etc.parent / "os-release")
    if not lines and own and own != suite:
        lines = [
            re.sub(rf"(\s){re.escape(own)}(-\S+)?(\s)", rf"\g<1>{suite}\g<2>\g<3>", line)
            for line in _mirror_lines(own, etc)
        ]
    return lines


def _mirror_lines(suite: str, etc: Path) -> list[str]:
    lines: list[str] = []
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for para in _deb822_paragraphs(path.read_text()):
            if "deb" not in para.get("types", "").split():
                continue
            if para.get("enabled", "yes").lower() == "no":
                continue
            options = ""
            if "signed-by" in para and para["signed-by"].startswith("/"):
                options = f"[signed-by={para['signed-by']}] "
            for uri in para.get("uris", "").split():
                for dist in para.get("suites", "").split():
                    if dist == suite or dist.startswith(f"{suite}-"):
                        lines.append(f"deb {options}{uri} {dist} {para.get('components', 'main')}")
    for path in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]:
        if not path.exists():
            continue
        for raw in path.read_text().splitlines():
            words = raw.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            rest = words[1:]
            if rest and rest[0].startswith("["):
                while rest and not rest[0].endswith("]"):
                    rest = rest[1:]
                rest = rest[1:]
            if len(rest) >= 2 and (rest[1] == suite or rest[1].startswith(f"{suite}-")):
                lines.append(raw.split("#", 1)[0].strip())
    return lines


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise ContainerError(
            f"missing {', '.join(missing)}: scripts/bootstrap installs them "
            "(apt-get install systemd-container mmdebstrap zstd)"
        )


def ensure_rootfs(suite: str = SUITE, cache: Path = CACHE_DIR, log: Log = _quiet) -> Path:
    """SUITE's extracted root file system (built and cached on first use); never written to."""
    key = rootfs_key(suite)
    tarball = cache / f"rootfs-{key}.tar.zst"
    tree = cache / f"rootfs-{key}"
    if tree.is_dir():
        return tree
    _require("mmdebstrap", "zstd", "tar")
    with _locked(cache / f"rootfs-{key}.lock"):
        if tree.is_dir():  # another builder finished while we waited
            return tree
        # Left by a builder that was killed (we hold the lock: nobody else is building).
        for stale in cache.glob(f".rootfs-{key}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        if not tarball.exists():
            _build_tarball(tarball, suite, log)
        log(f"extracting {tarball}")
        scratch = Path(tempfile.mkdtemp(prefix=f".rootfs-{key}.", dir=cache))
        try:
            subprocess.run(
                ["tar", "-C", str(scratch), "--zstd", "-xpf", str(tarball)],
                check=True,
                capture_output=True,
            )
            # mmdebstrap copies the host's name; nspawn then sets the machine's own.
            (scratch / "etc" / "hostname").unlink(missing_ok=True)
            # A fresh tree's is empty: networkd 257's DHCP client then fails ("No medium
            # found"). Every container gets its own from nspawn (--volatile=overlay).
            (scratch / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")
            scratch.chmod(0o755)
            scratch.rename(tree)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return tree


def _build_tarball(tarball: Path, suite: str, log: Log) -> None:
    mirrors = mirror_lines(suite)
    if not mirrors:
        raise ContainerError(f"no apt source for {suite} in /etc/apt: cannot run mmdebstrap")
    # The temporary name keeps the extension: mmdebstrap picks the format from it.
    partial = tarball.with_name(f".{tarball.name[: -len('.tar.zst')]}.{os.getpid()}.tar.zst")
    argv = [
        "mmdebstrap",
        "--quiet",
        f"--variant={VARIANT}",
        f"--include={','.join(packages(suite))}",
        suite,
        str(partial),
        *mirrors,
    ]
    log(f"building {tarball.name}: {shlex.join(argv)}")
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
            raise ContainerError(f"mmdebstrap failed (exit {done.returncode}):\n{tail}")
        partial.rename(tarball)
    finally:
        partial.unlink(missing_ok=True)
    size = tarball.stat().st_size / 2**20
    log(f"built {tarball} in {time.monotonic() - started:.1f} s ({size:.0f} MiB)")


def missing_depends(deb: Path, tree: Path) -> list[str]:
    """Package names the .deb's Depends line names that the tree does not have installed."""
    depends = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Depends"], check=True, capture_output=True, text=True
    ).stdout
    installed = {
        para["package"]
        for para in _deb822_paragraphs((tree / "var/lib/dpkg/status").read_text())
        if para.get("status") == "install ok installed"
    }
    missing = []
    for clause in depends.split(","):
        names = [re.split(r"[\s(:]", alt.strip())[0] for alt in clause.split("|")]
        if not any(name in installed for name in names):
            missing.append(clause.strip())
    return missing


# --- processes ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _comm(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def nspid(host_pid: int) -> list[int]:
    """The pid as seen in each nested pid namespace (outermost first)."""
    for line in (Path("/proc") / str(host_pid) / "status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(p) for p in line.split()[1:]]
    return [host_pid]


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ContainerError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def hierarchies() -> list[Path]:
    """Where nspawn needs a cgroup of its own when no host systemd made one: the named
    ``systemd`` v1 hierarchy and cgroup2 on a hybrid host (this one), else cgroup2 alone."""
    hybrid = [CGROUP_ROOT / "systemd", CGROUP_ROOT / "unified"]
    return hybrid if all(p.is_dir() for p in hybrid) else [CGROUP_ROOT]


def cgroup2_root() -> Path:
    """The cgroup2 mount (where systemd attaches IPAddressDeny='s BPF programs)."""
    unified = CGROUP_ROOT / "unified"
    return unified if (unified / "cgroup.controllers").exists() else CGROUP_ROOT


# --- the container --------------------------------------------------------------------------


@dataclass
class Container:
    """One booted container; ``halt()`` (or the context manager) removes every trace."""

    name: str
    tree: Path
    workdir: Path
    binds_ro: dict[str, str] = field(default_factory=dict)
    log: Log = _quiet
    nspawn: subprocess.Popen[bytes] | None = None
    leader: int = 0
    netns_made: bool = False
    cgroups: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    #: What ``systemctl is-system-running --wait`` said once booted: running or degraded.
    system_state: str = ""

    @property
    def netns(self) -> str:
        return self.name

    @property
    def nspawn_log(self) -> Path:
        return self.workdir / "nspawn.log"

    # -- life cycle

    def boot(self, timeout: float = 60) -> Container:
        _require("systemd-nspawn", "nsenter", "ip")
        started = time.monotonic()
        try:
            self._boot(timeout)
        except BaseException:
            self.halt()
            raise
        self.timings["boot"] = time.monotonic() - started
        return self

    def _boot(self, timeout: float) -> None:
        for hierarchy in hierarchies():
            path = hierarchy / self.name
            path.mkdir()
            self.cgroups.append(path)
        argv = [
            "systemd-nspawn",
            f"--directory={self.tree}",
            f"--machine={self.name}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            "--volatile=overlay",
            "--private-network",
            "--capability=CAP_NET_ADMIN",
            "--system-call-filter=bpf",
            *(f"--bind-ro={src}:{dst}" for src, dst in self.binds_ro.items()),
        ]
        # Into our cgroups first (both hierarchies), then exec nspawn: it and the container
        # stay there, which is how cleanup finds every process it started.
        join = 'for f in "$@"; do case $f in --) break;; esac; echo $$ > "$f"; shift; done'
        script = join + '; shift; exec "$@"'
        procs = [str(path / "cgroup.procs") for path in self.cgroups]
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.nspawn_log.open("wb") as out:
            self.nspawn = subprocess.Popen(
                ["sh", "-c", script, "sh", *procs, "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.leader = _wait(self._find_leader, timeout, "the container's PID 1")
        subprocess.run(
            ["ip", "netns", "attach", self.netns, str(self.leader)], check=True, capture_output=True
        )
        self.netns_made = True
        # systemctl needs PID 1's private bus socket, made a moment after PID 1 starts.
        _wait(self.path("/run/systemd/private").exists, timeout, "PID 1's private socket")
        state = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=timeout)
        if state.stdout.strip() not in ("running", "degraded"):
            raise ContainerError(
                f"the container did not boot: {state.stdout.strip()} {state.stderr.strip()}\n"
                + self.tail_log()
            )
        self.system_state = state.stdout.strip()

    def _find_leader(self) -> int:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise ContainerError(
                f"systemd-nspawn exited {self.nspawn.returncode}:\n{self.tail_log()}"
            )
        todo = [self.nspawn.pid]
        while todo:
            pid = todo.pop(0)
            for child in _children(pid):
                if _comm(child) == "systemd" and nspid(child)[-1] == 1:
                    return child
                todo.append(child)
        return 0

    def tail_log(self, lines: int = 30) -> str:
        try:
            text = self.nspawn_log.read_text(errors="replace")
        except OSError:
            return "(no nspawn log)"
        return "\n".join(text.splitlines()[-lines:])

    def halt(self, timeout: float = 30) -> None:
        """Power off (SIGTERM to nspawn), kill what is left, remove cgroups, netns, state."""
        started = time.monotonic()
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.log(f"{self.name}: no clean halt within {timeout:g} s, killing")
        self._kill_cgroups()
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.kill()
            self.nspawn.wait(timeout=10)
        for path in self.cgroups:
            _remove_cgroup(path)
        self.cgroups = []
        if self.netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
            self.netns_made = False
        for leftover in ("propagate", "unix-export", "incoming"):
            shutil.rmtree(Path("/run/systemd/nspawn") / leftover / self.name, ignore_errors=True)
        # Only empty ones: another container may be running (nspawn's image locks live there).
        for parent in ("propagate", "unix-export", "incoming", "locks", ""):
            with contextlib.suppress(OSError):
                (Path("/run/systemd/nspawn") / parent).rmdir()
        self.timings["halt"] = time.monotonic() - started

    def _kill_cgroups(self) -> None:
        for _ in range(100):
            pids: set[int] = set()
            for path in self.cgroups:
                for procs in path.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids.update(int(p) for p in procs.read_text().split())
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def __enter__(self) -> Container:
        return self.boot()

    def __exit__(self, *exc: object) -> None:
        self.halt()

    # -- running things inside

    def argv(self, argv: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
        assert self.leader, "not booted"
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        return [
            "nsenter",
            "-t",
            str(self.leader),
            "-a",
            "env",
            "-i",
            f"PATH={PATH}",
            "LANG=C.UTF-8",
            "SYSTEMD_COLORS=0",
            *extra,
            *argv,
        ]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(argv, env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise ContainerError(
                f"in {self.name}: {shlex.join(argv)} exited {done.returncode}\n"
                f"{done.stdout}{done.stderr}"
            )
        return done

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-ec", script], **kwargs)

    def path(self, inside: str) -> Path:
        """A path inside the container, reachable from the host (through PID 1's root)."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        script = 'mkdir -p "$(dirname "$1")"; cat > "$1"; chmod "$2" "$1"'
        self.run(["sh", "-ec", script, "sh", inside, f"{mode:o}"], input=text)

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        return self.run(["systemctl", *args], check=check, timeout=timeout).stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props))
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return values

    def host_pid(self, pid: int) -> int:
        """The host's pid of the container's PID (a MainPID, say)."""
        for cgroup in self.cgroups:
            if cgroup.parent != cgroup2_root():
                continue
            for procs in cgroup.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    for host in procs.read_text().split():
                        with contextlib.suppress(OSError):
                            if nspid(int(host))[-1] == pid and int(host) != self.leader:
                                return int(host)
        raise ContainerError(f"no host pid for pid {pid} of {self.name}")

    # -- the package

    def install_deb(
        self,
        inside: str,
        *,
        start: bool = False,
        timeout: float = 300,
        options: Sequence[str] = (),
    ) -> float:
        """``dpkg [OPTIONS] -i`` (offline: the tree holds every dependency). Unless START, a
        policy-rc.d (exit 101, the Debian way for chroots and image builds) keeps postinst
        from starting the service, so that the caller starts it with its own configuration."""
        started = time.monotonic()
        if not start:
            self.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
        try:
            self.run(
                ["dpkg", *options, "-i", inside],
                timeout=timeout,
                env={"DEBIAN_FRONTEND": "noninteractive"},
            )
        finally:
            if not start:
                self.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
        elapsed = time.monotonic() - started
        self.timings["dpkg -i"] = elapsed
        return elapsed


def _remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    for _ in range(100):
        dirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for sub in [*dirs, path]:
            with contextlib.suppress(OSError):
                sub.rmdir()
        if not path.exists():
            return
        time.sleep(0.05)


# --- the package ----------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
#: What the .deb is built from (as packaging/check-deb decides whether to rebuild).
DEB_SOURCES = ("pyproject.toml", "README.md", "nicreconciled", "contrib", "docs", "packaging")


def deb_path(suite: str = SUITE, repo: Path = REPO) -> Path:
    """dist/nicreconciled_<version>~deb<N>_<arch>.deb, as packaging/build-deb names SUITE's
    package (read here without dpkg-dev, which build-deb installs itself when it first runs)."""
    head = (repo / "packaging/debian/changelog").read_text().split("\n", 1)[0]
    found = re.match(r"(\S+) \(([^)]+)\)", head)
    if not found:
        raise ContainerError(f"packaging/debian/changelog: no version in {head!r}")
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()
    version = found.group(2) + SUITES[suite].deb_suffix
    return repo / "dist" / f"{found.group(1)}_{version}_{arch}.deb"


def newer_source(deb: Path, repo: Path = REPO) -> Path | None:
    """A source file changed after DEB was built (None: the .deb is current)."""
    built = deb.stat().st_mtime
    for name in DEB_SOURCES:
        top = repo / name
        for path in [top] if top.is_file() else top.rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.stat().st_mtime > built:
                return path
    return None


def ensure_deb(
    suite: str = SUITE, repo: Path = REPO, cache: Path = CACHE_DIR, log: Log = _quiet
) -> Path:
    """dist/'s .deb for SUITE, rebuilt with ``SUITE=<suite> packaging/build-deb`` when
    missing or older than a source."""
    with _locked(cache / "build-deb.lock"):
        deb = deb_path(suite, repo)
        reason = "missing" if not deb.exists() else None
        if reason is None:
            newer = newer_source(deb, repo)
            reason = f"older than {newer.relative_to(repo)}" if newer else None
        if reason is None:
            return deb
        log(f"{deb.name} is {reason}: SUITE={suite} packaging/build-deb")
        started = time.monotonic()
        done = subprocess.run(
            [str(repo / "packaging/build-deb")],
            cwd=repo,
            env={**os.environ, "SUITE": suite},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode != 0 or not deb.exists():
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
            raise ContainerError(
                f"SUITE={suite} packaging/build-deb failed (exit {done.returncode}):\n{tail}"
            )
        log(f"built {deb} in {time.monotonic() - started:.1f} s")
        return deb


#: The package's last release per suite, what an upgrade starts from: its version and the
#: commit of this repository it was built from (0.2.0: the last release before the package
#: was built per release; there is no earlier trixie package).
PREVIOUS: dict[str, tuple[str, str]] = {
    "bookworm": ("0.2.0", "fb3727892d03cfbd3a2726b29f4cbf2b4a5d861a"),
}


def ensure_previous_deb(
    suite: str = SUITE, repo: Path = REPO, cache: Path = CACHE_DIR, log: Log = _quiet
) -> Path | None:
    """SUITE's previous release of the package (None: there is none), built once from its
    commit with that commit's own packaging/build-deb and cached under CACHE_DIR."""
    if suite not in PREVIOUS:
        return None
    version, commit = PREVIOUS[suite]
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()
    name = f"nicreconciled_{version}_{arch}.deb"
    target = cache / "previous" / name
    if target.exists():
        return target
    with _locked(cache / "build-previous.lock"):
        if target.exists():
            return target
        known = subprocess.run(
            ["git", "-C", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
        )
        if known.returncode != 0:
            raise ContainerError(
                f"commit {commit[:12]} (release {version}) is not in {repo}: a shallow clone? "
                "(git fetch --unshallow)"
            )
        log(f"building the previous release {version} from {commit[:12]}")
        started = time.monotonic()
        scratch = Path(tempfile.mkdtemp(prefix=".previous.", dir=cache))
        try:
            src = scratch / "src"
            src.mkdir()
            archive = subprocess.Popen(
                ["git", "-C", str(repo), "archive", commit], stdout=subprocess.PIPE
            )
            subprocess.run(["tar", "-C", str(src), "-xf", "-"], stdin=archive.stdout, check=True)
            if archive.wait() != 0:
                raise ContainerError(f"git archive {commit[:12]} failed")
            done = subprocess.run(
                [str(src / "packaging/build-deb")],
                cwd=src,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            built = src / "dist" / name
            if done.returncode != 0 or not built.exists():
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
                raise ContainerError(f"building {version} failed (exit {done.returncode}):\n{tail}")
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(built, scratch / name)
            (scratch / name).rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log(f"built {target} in {time.monotonic() - started:.1f} s")
    return target


# --- the daemon's set-up inside -------------------------------------------------------------

#: The IMDS simulator of the installed package runs inside as a transient unit (it dies with
#: the container), on the container's loopback; its control socket is reached from the host
#: through PID 1's root (``Container.path``).
SIM_UNIT = "nicr-imds.service"
SIM_SOCKET = "/run/nicr-imds.sock"
SIM_LISTEN = "127.0.0.1:8080"
VENV_PYTHON = "/opt/nicreconciled/bin/python"
CONFIG = "/etc/nicreconciled/nicreconciled.toml"
UNIT = "nicreconciled.service"


def daemon_config(renderer: str = "netplan", **polling: float) -> str:
    """The configuration tests install: EC2 against the simulator, veth NICs allowed, raw
    kernel uevents (there is no udevd in the container), short polling."""
    values = {"deadline": 8.0, "ipv6_grace": 3.0, "max_interval": 1.0, **polling}
    lines = [
        "# Written by the tests (tests/sdcontainer.py).",
        'cloud = "ec2"',
        f'renderer = "{renderer}"',
        "resync_interval = 600",
        "[interfaces]",
        "virtual = true",
        'ignore = ["nrp*"]',
        "[udev]",
        'source = "kernel"',
        "[ec2]",
        f'endpoint = "http://{SIM_LISTEN}"',
        'fallback_endpoint = ""',
        "[polling]",
        *(f"{key} = {value:g}" for key, value in values.items()),
    ]
    return "\n".join(lines) + "\n"


def start_sim(box: Container, timeout: float = 30) -> None:
    """The simulator, as a unit inside; returns once its control socket exists."""
    box.run(
        [
            "systemd-run",
            f"--unit={SIM_UNIT}",
            "--property=Type=exec",
            "--quiet",
            VENV_PYTHON,
            "-m",
            "nicreconciled.sim",
            "--listen",
            SIM_LISTEN,
            "--control",
            SIM_SOCKET,
        ]
    )
    _wait(box.path(SIM_SOCKET).exists, timeout, f"the simulator's {SIM_SOCKET}")


def main_pid(box: Container, unit: str = UNIT) -> int:
    return int(box.show(unit, "MainPID")["MainPID"])


# --- packaging/check-deb --------------------------------------------------------------------

SMOKE_PRIMARY = "0a:5e:7d:00:01:01"
#: Run inside with the package's own interpreter (aiohttp and the simulator's client).
SMOKE_SIM_SETUP = f"""
import asyncio
from nicreconciled.sim.client import SimClient
async def main() -> None:
    async with SimClient({SIM_SOCKET!r}) as sim:
        await sim.wait_ready(20)
        await sim.add_nic({{"mac": {SMOKE_PRIMARY!r}, "device_number": 0,
                           "local_ipv4s": ["10.0.0.10"], "subnet_ipv4_cidr": "10.0.0.0/24"}})
        await sim.set_primary({SMOKE_PRIMARY!r})
asyncio.run(main())
"""


def smoke(deb: Path, suite: str = SUITE, log: Log = print) -> None:
    """The installed unit under a booted systemd of SUITE: packaging/check-deb's container
    step."""
    deb = deb.resolve()
    tree = ensure_rootfs(suite, log=log)
    missing = missing_depends(deb, tree)
    if missing:
        raise ContainerError(f"the rootfs lacks Depends of {deb.name}: {', '.join(missing)}")
    name = f"nicr-deb-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="nicreconciled-sdc.") as work:
        box = Container(name, tree, Path(work), {str(deb.parent): "/mnt/debs"}, log=log)
        try:
            box.boot()
            log(f"booted {name}: systemd {box.system_state} in {box.timings['boot']:.2f} s")
            _smoke(box, f"/mnt/debs/{deb.name}", log)
        except BaseException:
            if box.leader:
                journal = box.run(["journalctl", "-b", "--no-pager", "-n", "60"], check=False)
                log(f"--- the container's journal (last 60 lines)\n{journal.stdout}")
            raise
        finally:
            box.halt()
            log(f"halted in {box.timings.get('halt', 0):.2f} s")


def _smoke(box: Container, deb: str, log: Log) -> None:
    def check(ok: bool, what: str) -> None:
        if not ok:
            status = box.systemctl("status", UNIT, "--no-pager", "--lines=20", check=False)
            raise ContainerError(f"{what}\n{status}")

    took = box.install_deb(deb)
    enabled = box.systemctl("is-enabled", UNIT, check=False).strip()
    active = box.systemctl("is-active", UNIT, check=False).strip()
    log(
        f"dpkg -i in {took:.2f} s: {enabled}, {active} (policy-rc.d kept postinst from starting it)"
    )
    check(enabled == "enabled", f"postinst did not enable {UNIT}: {enabled}")
    start_sim(box)
    box.run([VENV_PYTHON, "-c", SMOKE_SIM_SETUP])
    box.write(CONFIG, daemon_config())

    started = time.monotonic()
    box.systemctl("start", UNIT)
    took = time.monotonic() - started
    state = box.show(UNIT, "ActiveState", "SubState", "StatusText", "MainPID")
    log(f"systemctl start returned in {took:.2f} s: {state['ActiveState']}/{state['SubState']}")
    # Type=notify: `systemctl start` waits for READY=1, so it is running at once.
    check(state["ActiveState"] == "active", f"not active after systemctl start: {state}")
    status = box.systemctl("status", UNIT, "--no-pager", check=False)
    line = next((s.strip() for s in status.splitlines() if s.strip().startswith("Status:")), "")
    log(f"systemctl status: {line}")
    check(bool(state["StatusText"]) and line.startswith('Status: "'), "no STATUS= line")

    first = state["MainPID"]
    box.run(["dpkg", "-i", deb], env={"DEBIAN_FRONTEND": "noninteractive"})
    again = box.show(UNIT, "ActiveState", "MainPID")
    log(
        f"dpkg -i again (upgrade path, no policy-rc.d): {again['ActiveState']},"
        f" MainPID {first} -> {again['MainPID']}"
    )
    check(
        again["ActiveState"] == "active" and again["MainPID"] != first,
        "postinst did not restart the running unit on upgrade",
    )

    started = time.monotonic()
    box.systemctl("stop", UNIT)
    took = time.monotonic() - started
    after = box.show(UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    log(
        f"systemctl stop: exit 0 in {took:.2f} s; Result={after['Result']},"
        f" main process exit status {after['ExecMainStatus']}"
    )
    # ExecMainCode 1 is CLD_EXITED: it exited by itself on SIGTERM, status 0.
    check(
        after["Result"] == "success"
        and after["ExecMainCode"] == "1"
        and after["ExecMainStatus"] == "0",
        f"unclean stop: {after}",
    )

    box.systemctl("start", UNIT)
    box.run(["dpkg", "--purge", "nicreconciled"], env={"DEBIAN_FRONTEND": "noninteractive"})
    gone = box.systemctl("is-active", UNIT, check=False).strip()
    unit_file = box.path(f"/lib/systemd/system/{UNIT}").exists()
    log(f"dpkg --purge of the running unit: {gone}, unit file {'left' if unit_file else 'removed'}")
    check(gone in ("inactive", "unknown") and not unit_file, "purge left the unit behind")


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tests/sdcontainer.py", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rootfs = sub.add_parser("rootfs", help="build the cached root file system; print its path")
    run = sub.add_parser("smoke", help="install DEB in a booted container and drive its unit")
    run.add_argument("deb", type=Path)
    for command in (rootfs, run):
        command.add_argument("--suite", choices=sorted(SUITES), default=SUITE)
    args = parser.parse_args(argv)
    # SIGTERM (check-deb stopped, CI's time out) unwinds like Ctrl-C: the container is halted.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if os.geteuid() != 0:
        print("sdcontainer: needs root (nspawn, cgroups, network namespaces)", file=sys.stderr)
        return 1
    try:
        if args.command == "rootfs":
            print(ensure_rootfs(args.suite, log=print))
        else:
            smoke(args.deb, args.suite)
    except ContainerError as exc:
        print(f"sdcontainer: FAIL: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
