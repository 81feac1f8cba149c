"""Command line: run / once / render / status / check / demo.

Exit codes: 0 ok, 1 not converged (``once``) or drifted (``check``), 2 usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from nicreconciled import __version__, log
from nicreconciled.config import Config, excluded_device_number, load
from nicreconciled.errors import ConfigError, FetchError, MetadataError
from nicreconciled.sources import SOURCES
from nicreconciled.status import Managed, StatusStore, summary

if TYPE_CHECKING:
    from nicreconciled.reconciler import Context


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nicreconciled",
        description="Configure hot-plugged cloud NICs from settled metadata, and keep it true.",
    )
    p.add_argument("--version", action="version", version=f"nicreconciled {__version__}")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="TOML configuration (default /etc/nicreconciled/nicreconciled.toml; "
        "a missing default file means all defaults)",
    )
    p.add_argument(
        "--log-format",
        choices=("auto", "console", "json", "journal"),
        default="auto",
        help="auto (default): the journal when systemd connected stderr to it, else console; "
        "console: readable lines; json: one JSON object per line; journal: structured "
        "journald entries (NIC_MAC=, NIC_IFNAME=, CLOUD=, ...)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also log debug events")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="the daemon, in the foreground (systemd Type=notify)")
    sub.add_parser("once", help="reconcile every NIC present now, then exit")
    r = sub.add_parser("render", help="fetch metadata and print what would be written")
    r.add_argument("--mac", help="only this MAC (need not be attached here)")
    s = sub.add_parser("status", help="per-NIC state, read from the state directory")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    c = sub.add_parser(
        "check",
        help="each managed NIC: what its applied configuration promises vs. the kernel now"
        " (exit 1 if any NIC drifted)",
    )
    c.add_argument("--json", action="store_true", help="machine-readable output")
    d = sub.add_parser(
        "demo", help="simulated metadata service + hot-plugged NIC in a scratch netns (root)"
    )
    d.add_argument(
        "--cloud",
        choices=tuple(SOURCES),
        default="ec2",
        help="ec2: IMDSv2 + netplan, IPv6 late; cloudstack: virtual router + keyfile;"
        " any other cloud: its simulator + netplan, then an upstream change",
    )
    d.add_argument("--ipv6-delay", type=float, default=4.0, help="seconds until IPv6 appears")
    return p


def _fail(message: str) -> int:
    print(f"nicreconciled: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.configure(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    if args.command == "demo":
        from nicreconciled.demo import run_demo

        return run_demo(cloud=args.cloud, ipv6_delay=args.ipv6_delay)
    try:
        config = load(args.config)
    except ConfigError as exc:
        return _fail(f"config: {exc}")
    if args.command == "status":
        return _status(config, as_json=args.json)
    if args.command == "check":
        return _check(config, as_json=args.json)
    try:
        return asyncio.run(_async_main(args, config))
    except KeyboardInterrupt:
        return 0


async def _async_main(args: argparse.Namespace, config: Config) -> int:
    from nicreconciled import wiring
    from nicreconciled.daemon import Daemon
    from nicreconciled.sources import NoCloudError

    config = wiring.resolve_renderer(config)
    parts = wiring.Parts(config)
    try:
        if args.command == "run":
            return await wiring.make_daemon(config, parts).run()
        try:
            source = await parts.detect(give_up_after=config.polling.deadline)
        except NoCloudError as exc:
            print(f"nicreconciled: {exc}", file=sys.stderr)
            return 1
        if args.command == "render":
            return await _render(
                config, wiring.build_context(config, source, apply=False), args.mac
            )
        daemon = Daemon(config, wiring.build_context(config, source), once=True)
        margin = config.polling.deadline + config.polling.max_interval * 2
        return await daemon.run_once(timeout=margin)
    finally:
        await parts.close()


async def _render(config: Config, ctx: Context, mac: str | None) -> int:
    from nicreconciled.model import normalize_mac
    from nicreconciled.ownership import Ownership
    from nicreconciled.system import sysfs

    #: MAC -> why it is not ours, as far as known before any fetch.
    not_ours: dict[str, str] = {}
    if mac is not None:
        try:
            macs = [normalize_mac(mac)]
        except ValueError as exc:
            return _fail(f"--mac: {exc}")
        if config.interfaces.excludes_mac(macs[0]):
            not_ours[macs[0]] = "excluded: exclude_macs"
    else:
        ownership = Ownership(config)
        macs = []
        for link in sysfs.list_links():
            if ownership.eligible(link):
                macs.append(link.mac)
                verdict = ownership.not_ours(link)
                if isinstance(verdict, tuple):
                    not_ours[link.mac] = f"{verdict[0]}: {verdict[1]}"
    status = 0
    for one in macs:
        if one in not_ours:
            print(f"# {one}: not managed ({not_ours[one]})", file=sys.stderr)
            continue
        try:
            obs = await ctx.source.fetch(one)
        except (FetchError, MetadataError) as exc:
            print(f"# {one}: {exc}", file=sys.stderr)
            status = 1
            continue
        for flag in obs.flags:
            print(f"# {one}: still propagating: {flag.kind}: {flag.detail}", file=sys.stderr)
        ranges = config.interfaces.exclude_device_numbers
        if obs.state is None:
            print(f"# {one}: not in the metadata; not managed", file=sys.stderr)
        elif obs.state.primary and not config.manage_primary:
            print(f"# {one}: primary NIC; not managed (manage_primary = false)", file=sys.stderr)
        elif rule := excluded_device_number(ranges, obs.state.device_number):
            print(
                f"# {one}: not managed (excluded: exclude_device_numbers {rule})", file=sys.stderr
            )
        else:
            print(f"# {config.effective_output_dir / ctx.renderer.filename(one)}")
            print(ctx.renderer.render(obs.state), end="")
    return status


def _status(config: Config, *, as_json: bool) -> int:
    """Per-NIC rows from the status files (unreadable ones skipped), and the same summary
    line as the daemon's STATUS=."""
    store = StatusStore(config.state_dir)
    rows = sorted(store.load_all(), key=lambda s: s.mac)
    if as_json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    daemon = store.load_daemon()
    if daemon is not None:
        print(f"daemon: {daemon.phase}: {daemon.detail}")
    if not rows:
        print(f"no NICs recorded under {config.state_dir}")
        return 0
    print(f"NICs: {summary(rows)}")
    header = ("MAC", "IFACE", "PHASE", "MANAGED", "FINGERPRINT", "LAST CHANGE", "WAITING / ERROR")
    table = [header]
    for r in rows:
        detail = "; ".join(r.waiting_on) or (f"error: {r.last_error}" if r.last_error else "")
        if r.kernel_missing:
            detail = f"kernel lacks: {'; '.join(r.kernel_missing)}" + (
                f"; {detail}" if detail else ""
            )
        if config.apply and r.managed is Managed.MANAGED and r.apply_pending:
            detail = "written, not applied" + (f"; {detail}" if detail else "")
        table.append(
            (
                r.mac,
                r.ifname or "-",
                r.phase,
                r.managed_text,
                r.fingerprint or "-",
                r.last_change or "-",
                detail,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _check(config: Config, *, as_json: bool) -> int:
    """Each managed NIC's promise (kept in its status file by the daemon) against the kernel
    now; 0 when every promised address, rule and table route is there, 1 when one is not.

    Only NICs whose configuration was applied have a promise; a NIC still converging (or
    whose apply keeps failing: ``status`` says why) is named on stderr, not counted.
    """
    from nicreconciled.promise import Promise
    from nicreconciled.system import kernelstate, sysfs

    links = {link.mac: link for link in sysfs.list_links()}
    results: list[dict[str, object]] = []
    pending: list[str] = []
    for row in sorted(StatusStore(config.state_dir).load_all(), key=lambda s: s.mac):
        link = links.get(row.mac)
        if row.managed is not Managed.MANAGED or link is None:
            continue  # not ours, or not attached here
        if row.promise is None:
            pending.append(f"{row.mac} {link.name}")
            continue
        try:
            promised = Promise.from_json(row.promise)
            kernel = kernelstate.read(link.ifindex, promised)
            missing = promised.missing(kernel)
            if missing and not kernel.up:
                missing.insert(0, "link down")
        except ValueError as exc:
            missing = [f"status file unreadable: {exc}"]
        except OSError as exc:
            print(f"nicreconciled: check: cannot read the kernel: {exc}", file=sys.stderr)
            return 1
        results.append(
            {
                "mac": row.mac,
                "ifname": link.name,
                "in_kernel": not missing,
                "missing": missing,
                "phase": str(row.phase),
                "heals": row.heals,
            }
        )
    drifted = [r for r in results if not r["in_kernel"]]
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for r in drifted:
            lines = r["missing"]
            assert isinstance(lines, list)
            print(f"{r['mac']} {r['ifname']}: missing {'; '.join(map(str, lines))}")
        if not drifted:
            print(f"{len(results)} managed NICs: everything promised is in the kernel")
    for line in pending:
        print(f"nicreconciled: check: {line}: not applied yet (see status)", file=sys.stderr)
    return 1 if drifted else 0
