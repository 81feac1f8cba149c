"""python -m bench [NAME ...]: run the benchmarks (all by default), print and save figures.

Each benchmark prints its tables and writes bench/results/NAME.json (peers also writes
peers.md and, with matplotlib installed, peers.png; fleet writes fleet.png). The exit status
is 0 when every benchmark produced its figures (whether or not a target was met), 1 when one
failed to, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from bench import (
    burst,
    clouds,
    convergence,
    fleet,
    footprint,
    fuzz,
    harness,
    heal,
    issue12,
    issue22,
    kernel,
    load,
    peers,
    soak,
)
from bench.harness import BenchError
from bench.report import table, verdict, write_json

BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "convergence": lambda args: convergence.run(trials=args.trials, delays=tuple(args.delays)),
    "burst": lambda _args: burst.run(),
    "footprint": lambda args: footprint.run(
        idle=args.idle, soak=args.soak, metrics_soak=args.metrics_soak
    ),
    # After burst: load quotes the burst peak from bench/results/burst.json.
    "load": lambda _args: load.run(),
    "peers": lambda args: peers.run(delays=tuple(args.peer_delays)),
    "fleet": lambda args: fleet.run(vms=args.vms, outage=args.outage),
    "clouds": lambda _args: clouds.run(),
    "kernel": lambda args: kernel.run(
        trials=args.kernel_trials[0],
        late_trials=args.kernel_trials[1],
        bursts=args.kernel_trials[2],
        big_bursts=args.kernel_big,
        boots=args.kernel_boots,
        setups=tuple(args.kernel_setups),
    ),
    "heal": lambda args: heal.run(trials=args.heal_trials, churn=args.churn),
    # Not in a plain `python -m bench` run: an hour (issue 19); CI runs 5 minutes, strict.
    "soak": lambda args: soak.run(minutes=args.soak_minutes, strict=args.soak_strict),
    # Not in a plain `python -m bench` run either: 100,000 documents per cloud take ~45 min.
    "fuzz": lambda args: fuzz.run(docs=args.fuzz_docs),
}
#: Run only when named.
ON_REQUEST = {"soak", "fuzz"}
#: Benchmarks that measure issue 22's figures, and the target keys only that table reads.
ISSUE22 = {"kernel", "burst", "footprint"}
ISSUE22_KEYS = ("kernel_", "rss_metrics_")


def _delays(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated seconds: {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("delays must be positive")
    return values


def _setting(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        return key.strip(), float(value) if sep else float("nan")
    except ValueError:
        raise argparse.ArgumentTypeError(f"not KEY=SECONDS: {text!r}") from None


def _counts(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not three comma-separated counts: {text!r}") from None
    if len(values) != 3 or any(v < 0 for v in values) or not any(values):
        raise argparse.ArgumentTypeError("three counts >= 0, not all 0: C,L,B")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"one of {', '.join(BENCHMARKS)}")
    p.add_argument(
        "--trials", type=int, default=convergence.TRIALS_PER_DELAY,
        help="convergence: trials per delay (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--delays", type=_delays, default=list(convergence.DELAYS),
        help="convergence: IPv6 delays in seconds, comma-separated (default 1,4,10)",
    )  # fmt: skip
    p.add_argument(
        "--idle", type=float, default=footprint.IDLE,
        help="footprint: idle window in seconds (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--soak", type=float, default=footprint.SOAK,
        help="footprint: soak length in seconds with the default resync_interval, 0 = none "
        "(default %(default)s; the issue's figure is 600)",
    )  # fmt: skip
    p.add_argument(
        "--metrics-soak", type=float, default=footprint.METRICS_SOAK,
        help="footprint: then the same soak with [metrics] textfile set, seconds, 0 = none "
        "(default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--peer-delays", type=_delays, default=list(peers.DELAYS),
        help="peers: late IPv6 delays in seconds (default 1,4,10,45,120)",
    )  # fmt: skip
    p.add_argument(
        "--vms", type=int, default=fleet.VMS,
        help="fleet: reconcilers against the VR (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--outage", type=float, default=fleet.OUTAGE,
        help="fleet: VR outage in seconds (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--kernel-trials", type=_counts,
        default=[kernel.TRIALS, kernel.LATE_TRIALS, kernel.BURST_ROUNDS],
        help="kernel: per manager, ENIs with complete metadata, ENIs with late IPv6, bursts "
        f"(default {kernel.TRIALS},{kernel.LATE_TRIALS},{kernel.BURST_ROUNDS})",
    )  # fmt: skip
    p.add_argument(
        "--kernel-big", type=int, default=kernel.BIG_BURST_ROUNDS,
        help=f"kernel: bursts of {kernel.BIG_BURST} complete ENIs per setup (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--kernel-boots", type=int, default=kernel.BOOT_ROUNDS,
        help=f"kernel: boots with {kernel.BOOT_NICS} NICs present per setup "
        "(default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--kernel-setups", type=lambda text: [v for v in text.split(",") if v],
        default=list(kernel.SETUPS),
        help=f"kernel: comma-separated, of {','.join(kernel.SETUPS)} (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--polling", type=_setting, action="append", default=[], metavar="KEY=VALUE",
        help="every daemon: this [polling] value instead of the default (repeatable), e.g. "
        "probe_interval=0.3: to measure a setting before it becomes the default",
    )  # fmt: skip
    p.add_argument(
        "--heal-trials", type=int, default=heal.TRIALS,
        help="heal: deletions per manager (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--churn", type=float, default=heal.CHURN,
        help="heal: seconds of foreign route churn, and of idle, per manager "
        "(default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--soak-minutes", type=float, default=soak.MINUTES,
        help="soak: minutes of churn (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--soak-strict", action="store_true",
        help="soak: fail (exit 1) on a leak, a traceback or an incomplete NIC",
    )  # fmt: skip
    p.add_argument(
        "--fuzz-docs", type=int, default=fuzz.DOCS,
        help="fuzz: documents per cloud (default %(default)s)",
    )  # fmt: skip
    return p


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    # SIGTERM takes the same way out as Ctrl-C: every stack is torn down on the way.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    names = args.names or [n for n in BENCHMARKS if n not in ON_REQUEST]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; one of {', '.join(BENCHMARKS)}")
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if args.fuzz_docs < 1:
        parser.error("--fuzz-docs must be at least 1")
    if args.soak < 0 or args.vms < 1 or args.outage <= 0:
        parser.error("--soak must be >= 0, --vms >= 1, --outage > 0")
    if args.polling:
        from pydantic import ValidationError

        from nicreconciled.config import PollingConfig

        try:
            PollingConfig(**dict(args.polling))
        except (ValidationError, TypeError) as exc:
            parser.error(f"--polling: {exc}")
        harness.POLLING.update(args.polling)
        print("[polling] for every daemon: " + ", ".join(f"{k} = {v:g}" for k, v in args.polling))
    if os.geteuid() != 0:
        print("python -m bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    targets: list[dict[str, Any]] = []
    failed: list[str] = []
    began = time.monotonic()
    try:
        for name in names:
            t0 = time.monotonic()
            try:
                result = BENCHMARKS[name](args)
            except BenchError as exc:
                print(f"!! {name}: {exc}", file=sys.stderr)
                failed.append(name)
                continue
            result["duration_s"] = time.monotonic() - t0
            path = write_json(name, result)
            print(f"   ({name}: {result['duration_s']:.1f} s; results in {path})\n", flush=True)
            targets += result.get("targets", [])
    except KeyboardInterrupt:
        print("\ninterrupted: namespaces and processes removed", file=sys.stderr)
        return 130
    if len(names) > 1 and targets:
        print("== targets")
        print(
            table(
                ["target", "measured", "limit", "result"],
                [
                    [t["name"], f"{t['value']:.3f} {t['unit']}", f"{t['limit']} {t['unit']}",
                     verdict(t["met"])]
                    for t in targets
                ],
            )
        )  # fmt: skip
        print(f"   all benchmarks: {time.monotonic() - began:.1f} s")
    if any("key" in t and not t["key"].startswith(ISSUE22_KEYS) for t in targets):
        print("== issue 12: before, now, goal (bench/results/issue12.md)")
        print(issue12.write())
    if any(name in ISSUE22 for name in names):
        print("== issue 22: before, now, goal, where the time goes (bench/results/issue22.md)")
        print(issue22.write())
    if failed:
        print(f"benchmarks that produced no figures: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
