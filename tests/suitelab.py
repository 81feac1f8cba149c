"""The network lab on another Debian release's stack, without booting it.

    scripts/suite-lab trixie [pytest arguments]     # default: tests/integration/lab

Standard library only: it runs with the host's /usr/bin/python3, as root, on a Debian host
(``mmdebstrap``, and ``unshare`` from util-linux). Three steps:

1. **root**: ``mmdebstrap --variant=minbase SUITE`` with what the lab needs (``PACKAGES``),
   from the host's own apt sources with the host's release name replaced by SUITE (the same
   mirrors carry every release), plus a machine-id of its own (networkd 257's DHCPv4 client
   fails with "No medium found" when it is empty, as mmdebstrap leaves it). Cached under
   ``${NICR_TEST_CACHE:-/var/cache/nicreconciled-tests}/lab-SUITE-KEY`` (KEY: suite,
   variant, packages, ``LAYOUT``), built under a temporary name and renamed, under a flock.
2. **venv**: the suite's ``python3 -m venv`` with the project's dependencies and its
   ``test`` extra (read from pyproject.toml), cached beside the root as
   ``lab-SUITE-KEY.venv-VKEY`` (VKEY: the root's key and that list), the same way. The
   project itself is not installed: the checkout is mounted read-only at its own path and
   put on PYTHONPATH, so the code under test is always the checkout's.
3. **session**: ``unshare --mount --pid --fork`` runs ``_session`` (this file) as PID 1 of
   a new PID namespace in a new private mount namespace. It mounts an overlay (the cached
   tree below, a tmpfs above: the cache is never written), /proc of the new PID namespace,
   /sys, /dev, fresh tmpfs /run (so ``ip netns add`` makes its /run/netns here) and /tmp,
   the checkout (read-only) and the venv; chroots into it itself (systemd's tools skip
   their work, exiting 0, when their root is not PID 1's: "Running in chroot, ignoring
   command 'reload'"), prints the stack's versions and checks them against ``SUITES`` (the
   lab must run the suite's binaries, not the host's), and runs pytest.

Cleanup needs no bookkeeping: nothing is mounted outside that mount namespace and nothing
runs outside that PID namespace. When PID 1 exits (pytest passed, failed, was interrupted or
killed) the kernel kills whatever is left in the PID namespace; the mount namespace, every
mount in it and the network namespaces the lab bound under its private /run/netns go with
the last process. A first SIGINT, SIGTERM or SIGHUP to this script becomes a SIGINT to
pytest (its fixtures tear their labs down); a second one, or ``GRACE`` s, ends PID 1. If
this script is killed outright, unshare gets SIGKILL too (parent-death signal), and its
``--kill-child`` ends PID 1.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("NICR_TEST_CACHE", "/var/cache/nicreconciled-tests"))
VARIANT = "minbase"
#: What the lab needs (nicreconciled/lab/base.py: LAB_TOOLS, MANAGER_TOOLS, the udev lab's
#: systemd-udevd): both managers, netplan, the router's dnsmasq, the probes, Python.
#: python3-gi and gir1.2-nm-1.0: libnm, for tests/tools/nm_keyfile_check.py.
PACKAGES = (
    "systemd",
    "udev",
    "network-manager",
    "netplan.io",
    "dnsmasq-base",
    "dbus-daemon",
    "iproute2",
    "iputils-ping",
    "tcpdump",
    "procps",
    "util-linux",
    "python3",
    "python3-venv",
    "python3-gi",
    "gir1.2-nm-1.0",
)
#: Bump when the way the tree or the venv is made changes (the cache keys cover it).
LAYOUT = 1
#: Where the venv is mounted inside (its scripts name this path).
VENV = "/opt/nicreconciled-venv"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The host's CA bundle (ca-certificates): pip inside trusts what the host trusts (a TLS-
#: intercepting proxy's CA included); the root itself has no ca-certificates.
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
#: Seconds pytest gets to tear its labs down after the first interruption.
GRACE = 60.0
#: Environment passed into the session (everything else is dropped: the host's PATH may
#: name pyenv shims, its PYTHON* variables another interpreter).
PASSED_ENV = ("TERM", "CI", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY")
PASSED_ENV += ("HTTPS_PROXY", "NO_PROXY", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Suite:
    """A Debian release the lab can run on, and the versions its stack must report (a
    prefix of each), so that a run on the wrong binaries cannot pass unnoticed."""

    name: str
    systemd: str
    network_manager: str
    netplan: str
    python: str


SUITES = {
    s.name: s
    for s in (
        Suite("bookworm", systemd="252", network_manager="1.42.", netplan="0.106", python="3.11."),
        Suite("trixie", systemd="257", network_manager="1.52.", netplan="1.1.", python="3.13."),
    )
}


class SuiteLabError(RuntimeError):
    """The root, the venv or the session could not be made; the message says why."""


def _log(text: str) -> None:
    print(f"suite-lab: {text}", file=sys.stderr, flush=True)


# --- keys and sources ---------------------------------------------------------------------


def root_key(suite: str, packages: Sequence[str] = PACKAGES) -> str:
    spec = {"suite": suite, "variant": VARIANT, "packages": sorted(packages), "layout": LAYOUT}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The project's dependencies and its ``test`` extra, as pip requirement strings."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["test"]]


def venv_key(rkey: str, reqs: Sequence[str]) -> str:
    spec = {"root": rkey, "requirements": list(reqs), "layout": LAYOUT}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    """The paragraphs of a deb822 file (``*.sources``), keys lowercased."""
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


def host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    for line in os_release.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    raise SuiteLabError(f"no VERSION_CODENAME in {os_release}")


def mirror_lines(
    suite: str, host: str, sources_dir: Path = Path("/etc/apt/sources.list.d")
) -> list[str]:
    """One-line ``deb`` entries for mmdebstrap: the host's own deb822 sources for release
    HOST (HOST, HOST-updates, HOST-security, ...) with HOST replaced by SUITE; entries that
    name SUITE already are taken as they are."""
    lines: list[str] = []
    for path in sorted(sources_dir.glob("*.sources")):
        for para in deb822_paragraphs(path.read_text()):
            if "deb" not in para.get("types", "").split():
                continue
            if para.get("enabled", "yes").lower() == "no":
                continue
            options = ""
            if para.get("signed-by", "").startswith("/"):
                options = f"[signed-by={para['signed-by']}] "
            components = para.get("components", "main")
            for uri in para.get("uris", "").split():
                for dist in para.get("suites", "").split():
                    if dist == suite or dist.startswith(f"{suite}-"):
                        mapped = dist
                    elif dist == host or dist.startswith(f"{host}-"):
                        mapped = suite + dist[len(host) :]
                    else:
                        continue
                    line = f"deb {options}{uri} {mapped} {components}"
                    if line not in lines:
                        lines.append(line)
    return lines


# --- the cache ----------------------------------------------------------------------------


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on PATH (created), for one builder at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale(cache: Path, pattern: str) -> None:
    """Temporary trees of killed builders (call with the lock held: nobody builds now)."""
    for stale in cache.glob(pattern):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def ensure_root(suite: str, cache: Path = CACHE_DIR, log: Log = _log) -> Path:
    """SUITE's root file system for the lab (built and cached on first use)."""
    key = root_key(suite)
    tree = cache / f"lab-{suite}-{key}"
    if tree.is_dir():
        return tree
    if shutil.which("mmdebstrap") is None:
        raise SuiteLabError("mmdebstrap is not installed (scripts/bootstrap installs it)")
    host = host_codename()
    mirrors = mirror_lines(suite, host)
    if not mirrors:
        raise SuiteLabError(f"no deb822 apt source for {host} or {suite} in /etc/apt")
    with locked(cache / f"lab-{suite}-{key}.lock"):
        if tree.is_dir():  # another builder finished while we waited
            return tree
        _remove_stale(cache, f".lab-{suite}-{key}.*")
        partial = cache / f".lab-{suite}-{key}.{os.getpid()}"
        argv = ["mmdebstrap", "--quiet", f"--variant={VARIANT}"]
        argv += [f"--include={','.join(PACKAGES)}", suite, str(partial), *mirrors]
        log(f"building the {suite} root: {shlex.join(argv)}")
        started = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
                raise SuiteLabError(f"mmdebstrap failed (exit {done.returncode}):\n{tail}")
            # networkd's DHCP client (257) needs one; unique per cached tree.
            (partial / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")
            # The host's, copied by mmdebstrap: the session puts the current one in place.
            (partial / "etc" / "resolv.conf").unlink(missing_ok=True)
            partial.chmod(0o755)
            partial.rename(tree)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        log(f"built {tree} in {time.monotonic() - started:.1f} s")
    return tree


def ensure_venv(suite: str, root: Path, cache: Path = CACHE_DIR, log: Log = _log) -> Path:
    """The venv (the suite's Python, the project's requirements) for ROOT, cached."""
    reqs = requirements()
    rkey = root_key(suite)
    venv = cache / f"lab-{suite}-{rkey}.venv-{venv_key(rkey, reqs)}"
    if venv.is_dir():
        return venv
    with locked(cache / f"lab-{suite}-{rkey}.lock"):
        if venv.is_dir():
            return venv
        _remove_stale(cache, f".lab-{suite}-{rkey}.venv-*")
        partial = cache / f".{venv.name}.{os.getpid()}"
        partial.mkdir(mode=0o755)
        script = (
            f"python3 -m venv {VENV} && "
            f"{VENV}/bin/pip install --quiet --disable-pip-version-check "
            f"--no-cache-dir {shlex.join(reqs)}"
        )
        log(f"installing the venv for {suite}: {len(reqs)} requirements")
        started = time.monotonic()
        try:
            code = run_session(
                root, partial, ["/bin/sh", "-ec", script], check_suite=None, network=True
            )
            if code != 0:
                raise SuiteLabError(f"the venv for {suite} could not be made (exit {code})")
            partial.rename(venv)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        log(f"built {venv} in {time.monotonic() - started:.1f} s")
    return venv


# --- the session --------------------------------------------------------------------------


def session_env() -> dict[str, str]:
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    env.update(
        PATH=f"{VENV}/bin:{PATH}",
        HOME="/root",
        LANG="C.UTF-8",
        PYTHONPATH=str(REPO),
        # The checkout is read-only inside; no Python 3.13 bytecode next to it either.
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update({k: v for k, v in os.environ.items() if k.startswith("NICR_")})
    return env


def _die_with_parent() -> None:
    """In unshare (before its exec): SIGKILL when this script dies, even by SIGKILL; its
    ``--kill-child`` then ends PID 1, and with it the session."""
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(126)


def _session_pid(unshare_pid: int) -> int | None:
    """The host pid of the session's PID 1: unshare's one child."""
    with contextlib.suppress(OSError, ValueError):
        text = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
        return int(text[0]) if text else None
    return None


def run_session(
    root: Path,
    venv: Path,
    argv: Sequence[str],
    *,
    check_suite: str | None,
    network: bool = False,
) -> int:
    """Run ARGV chrooted in an overlay of ROOT (with VENV and the checkout mounted) as
    described in the module docstring; its exit status. CHECK_SUITE: print the stack's
    versions first and fail (exit 2) when they are not that suite's. NETWORK: the host's
    resolv.conf and CA bundle inside (PIP_CERT names it), for pip."""
    sessions = CACHE_DIR / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    for old in sessions.iterdir():  # mount points of sessions that were killed
        if old.name.isdigit() and not Path(f"/proc/{old.name}").exists():
            with contextlib.suppress(OSError):
                old.rmdir()
    scratch = sessions / str(os.getpid())
    scratch.mkdir(exist_ok=True)
    spec = {
        "root": str(root),
        "venv": str(venv),
        "scratch": str(scratch),
        "argv": list(argv),
        "env": session_env(),
        "check_suite": check_suite,
        "network": network,
    }
    if network and Path(HOST_CA).is_file():
        spec["env"]["PIP_CERT"] = HOST_CA
    unshare = ["unshare", "--mount", "--pid", "--fork", "--kill-child"]
    unshare += ["--propagation", "private", "--"]
    command = [*unshare, sys.executable, str(Path(__file__).resolve()), "_session"]
    # Its own session: a terminal's ^C reaches this script only, which passes it on.
    proc = subprocess.Popen(
        [*command, json.dumps(spec)], start_new_session=True, preexec_fn=_die_with_parent
    )
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        pid1 = _session_pid(proc.pid)
        if pid1 is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1, signal.SIGTERM)

    previous = {
        s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        code = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        with contextlib.suppress(OSError):
            scratch.rmdir()
    if received:
        _log(f"interrupted ({', '.join(signal.Signals(s).name for s in received)})")
        return 130 if code == 0 else code
    return code if code >= 0 else 128 - code


# Inside the namespaces (PID 1): ---------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                   ctypes.c_ulong(flags), data.encode() or None) != 0:  # fmt: skip
        code = ctypes.get_errno()
        raise OSError(code, f"mount {source} on {target}: {os.strerror(code)}")


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384


def _bind(source: str, target: str, *, recursive: bool = False, readonly: bool = False) -> None:
    _mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if readonly:
        _mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _mount_view(spec: dict[str, Any]) -> str:
    """The session's root: an overlay of the cached tree, and what the lab needs in it."""
    scratch = spec["scratch"]
    _mount("suite-lab", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for sub in ("upper", "work", "root"):
        os.mkdir(f"{scratch}/{sub}")
    view = f"{scratch}/root"
    layers = f"lowerdir={spec['root']},upperdir={scratch}/upper,workdir={scratch}/work"
    _mount("suite-lab", view, "overlay", 0, layers)
    _mount("proc", f"{view}/proc", "proc", MS_NOSUID | MS_NODEV)
    _bind("/sys", f"{view}/sys", recursive=True)
    _bind("/dev", f"{view}/dev", recursive=True)
    _mount("suite-lab", f"{view}/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    _mount("suite-lab", f"{view}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for mountpoint in (str(REPO), VENV):  # in the overlay's upper layer: nothing cached
        os.makedirs(f"{view}{mountpoint}", exist_ok=True)
    _bind(str(REPO), f"{view}{REPO}", readonly=True)
    _bind(spec["venv"], f"{view}{VENV}")
    if spec["network"]:  # the venv's build: pip's name lookups, and the host's trust store
        with contextlib.suppress(OSError):
            shutil.copyfile("/etc/resolv.conf", f"{view}/etc/resolv.conf")
        if Path(HOST_CA).is_file():
            os.makedirs(f"{view}{Path(HOST_CA).parent}", exist_ok=True)
            shutil.copyfile(HOST_CA, f"{view}{HOST_CA}")
    return view


VERSIONS = r"""
networkd=$(/lib/systemd/systemd-networkd --version | sed -n '1s/^systemd \([^ ]*\) .*/\1/p')
nm=$(/usr/sbin/NetworkManager --version)
netplan=$(dpkg-query -W -f '${Version}' netplan.io)
dnsmasq=$(dnsmasq --version | sed -n '1s/^Dnsmasq version \([^ ]*\).*/\1/p')
python=$(%s -c 'import platform; print(platform.python_version())')
echo "$networkd $nm $netplan $dnsmasq $python"
"""


def _stack_versions() -> dict[str, str]:
    done = subprocess.run(
        ["/bin/sh", "-ec", VERSIONS % f"{VENV}/bin/python"],
        capture_output=True, text=True, env={"PATH": PATH}, timeout=60,
    )  # fmt: skip
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 5:
        raise SuiteLabError(f"cannot read the stack's versions: {done.stdout}{done.stderr}")
    names = ("systemd-networkd", "NetworkManager", "netplan.io", "dnsmasq", "Python")
    return dict(zip(names, words, strict=True))


def _check_versions(versions: dict[str, str], suite: Suite) -> list[str]:
    want = {
        "systemd-networkd": suite.systemd,
        "NetworkManager": suite.network_manager,
        "netplan.io": suite.netplan,
        "Python": suite.python,
    }
    return [
        f"{name} {versions[name]} is not {suite.name}'s ({prefix}...)"
        for name, prefix in want.items()
        if not versions[name].startswith(prefix)
    ]


def _session(spec: dict[str, Any]) -> int:
    """PID 1 of the session's PID namespace (see the module docstring)."""
    if os.getpid() != 1:
        raise SuiteLabError("_session must run as PID 1 of a new PID namespace")
    view = _mount_view(spec)
    # PID 1 itself enters the view: systemd's tools compare their root with PID 1's and,
    # when they differ ("running in chroot"), skip their work and still exit 0
    # (networkctl reload, udevadm trigger and control, systemctl).
    os.chroot(view)
    os.chdir("/")
    if spec["check_suite"] is not None:
        versions = _stack_versions()
        print("stack: " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
        wrong = _check_versions(versions, SUITES[spec["check_suite"]])
        if wrong:
            print("suite-lab: " + "; ".join(wrong), file=sys.stderr, flush=True)
            return 2
    child = os.fork()
    if child == 0:
        try:
            # unshare's parent ignores SIGINT and SIGTERM, and an ignored signal stays
            # ignored across exec: pytest would never see its KeyboardInterrupt.
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            os.chdir(str(REPO))
            os.execve(spec["argv"][0], spec["argv"], spec["env"])
        except OSError as exc:
            print(f"suite-lab: cannot start {spec['argv'][0]}: {exc}", file=sys.stderr)
        os._exit(127)

    def interrupt(signum: int, _frame: Any) -> None:
        if signum == signal.SIGALRM or interrupted:
            print("suite-lab: ending the session now", file=sys.stderr, flush=True)
            os._exit(130)  # the kernel kills the rest of the PID namespace
        interrupted.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGINT)
        signal.alarm(int(GRACE))

    interrupted: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(signum, interrupt)
    status = 0
    while True:  # PID 1 reaps every orphan until its one child is gone
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break
        except OSError as exc:  # pragma: no cover - EINTR is retried by Python
            if exc.errno != errno.EINTR:
                raise
            continue
        if pid == child:
            status = os.waitstatus_to_exitcode(raw)
            break
    return status if status >= 0 else 128 - status


# --- command line -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_session"]:
        return _session(json.loads(args[1]))
    parser = argparse.ArgumentParser(
        prog="scripts/suite-lab",
        description="Run the network lab's tests on another Debian release's stack "
        "(a cached mmdebstrap root, chrooted in private namespaces).",
    )
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="default: tests/integration/lab"
    )
    opts = parser.parse_args(args)
    if os.geteuid() != 0:
        _log("needs root (mount, PID and network namespaces)")
        return 2
    if shutil.which("unshare") is None:
        _log("unshare is not installed (util-linux)")
        return 2
    started = time.monotonic()
    try:
        root = ensure_root(opts.suite)
        venv = ensure_venv(opts.suite, root)
    except SuiteLabError as exc:
        _log(str(exc))
        return 2
    ready = time.monotonic() - started
    _log(f"{opts.suite} root and venv ready in {ready:.1f} s ({root.name})")
    pytest = [f"{VENV}/bin/python", "-m", "pytest", "-p", "no:cacheprovider"]
    pytest += opts.pytest_args or ["tests/integration/lab"]
    code = run_session(root, venv, pytest, check_suite=opts.suite)
    _log(f"exit {code}; {time.monotonic() - started:.1f} s in all ({ready:.1f} s set-up)")
    return code


if __name__ == "__main__":
    sys.exit(main())
