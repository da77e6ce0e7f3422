"""The ``fleetscore`` command: generate a synthetic fleet, train its models, score an hour."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta

from cluster.config import setting
from scoring import layout, telemetry
from scoring.generate import device_ids, generate_hour
from scoring.store import Store, parquet_bytes


def generate(args: argparse.Namespace) -> int:
    """Write ``--hours`` hours of synthetic telemetry ending at ``--end``, and their anomalies."""
    store = Store(args.store)
    store.create()
    end = layout.parse_hour(args.end) if args.end else layout.last_full_hour()
    hours = layout.hour_range(end - timedelta(hours=args.hours - 1), end)
    devices = device_ids(args.devices)
    for hour in hours:
        frame, anomalies = generate_hour(devices, hour, seed=args.seed, anomaly_rate=args.anomaly_rate)
        telemetry.write_hour(store, hour, frame)
        store.write(layout.anomalies_file(hour), parquet_bytes(anomalies))
        print(f"{layout.hour_label(hour)}: {len(frame):,} rows, {len(anomalies)} injected anomalies")
    print(f"telemetry of {len(devices)} devices in {store.path(layout.TELEMETRY)}")
    return 0


def train(args: argparse.Namespace) -> int:
    from flows.train import train_fleet

    end = layout.parse_hour(args.end) if args.end else layout.last_full_hour() - timedelta(hours=1)
    start = end - timedelta(hours=args.hours - 1)
    summary = train_fleet(start=layout.hour_label(start), end=layout.hour_label(end), store=args.store,
                          granularity=args.granularity, cluster=args.cluster)
    print(json.dumps(summary, indent=1))
    return 0


def score(args: argparse.Namespace) -> int:
    from flows.score import score_fleet

    summary = score_fleet(store=args.store, hour=args.hour, cluster=args.cluster)
    print(json.dumps(summary, indent=1))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fleetscore", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--store", default=setting("store"),
                         help="store URL: a path, file://... or az://container/prefix (default: %(default)s)")
        sub.set_defaults(func=func)
        return sub

    gen = command("generate", generate, "write a synthetic fleet's telemetry with recorded anomalies")
    gen.add_argument("--devices", type=int, default=200, help="number of devices (default: %(default)s)")
    gen.add_argument("--hours", type=int, default=3, help="hours to write (default: %(default)s)")
    gen.add_argument("--end", help="last hour, YYYY-MM-DDTHH UTC (default: the last full hour)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    gen.add_argument("--anomaly-rate", type=float, default=0.05,
                     help="share of devices with an anomaly burst per hour (default: %(default)s)")

    fit = command("train", train, "fit and publish one model per device (or sensor) on a window of hours")
    fit.add_argument("--end", help="last hour of the window, YYYY-MM-DDTHH UTC "
                     "(default: the hour before the last full hour, which `score` takes by default)")
    fit.add_argument("--hours", type=int, default=2, help="hours in the window (default: %(default)s)")
    fit.add_argument("--granularity", choices=["device", "sensor"], default="device",
                     help="one model per device over its tags, or per (device, tag) (default: %(default)s)")
    fit.add_argument("--cluster", help="cluster kind: local or address (default: fleetscore.cluster.kind)")

    run = command("score", score, "score one hour with the score-fleet flow and commit its predictions")
    run.add_argument("--hour", help="hour to score, YYYY-MM-DDTHH UTC (default: the last full hour)")
    run.add_argument("--cluster", help="cluster kind: local or address (default: fleetscore.cluster.kind)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
