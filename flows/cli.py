"""The ``fleetscore`` command: generate a fleet, train or import its models, score an hour, serve it hourly, backfill, sweep Azure."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from datetime import timedelta

from cluster.clusters import KINDS
from cluster.config import setting

# Scoring, Prefect and the flows are imported by the commands that use them: every Dask worker a
# local cluster spawns imports this module again (it is the main module of `fleetscore`), and a
# worker should start in well under a second, importing what a batch needs only when one arrives.


def generate(args: argparse.Namespace) -> int:
    """Write ``--hours`` hours of synthetic telemetry ending at ``--end``, and their anomalies."""
    from scoring import layout, telemetry
    from scoring.generate import device_ids, generate_hour
    from scoring.realistic import Delivery, realistic_hour
    from scoring.store import Store, parquet_bytes

    delivery = {f.name: getattr(args, f.name) for f in fields(Delivery) if getattr(args, f.name) is not None}
    if delivery and not args.realistic:
        raise SystemExit(f"fleetscore generate: --{', --'.join(delivery)} only apply with --realistic")
    store = Store(args.store)
    store.create()
    end = layout.parse_hour(args.end) if args.end else layout.last_full_hour()
    hours = layout.hour_range(end - timedelta(hours=args.hours - 1), end)
    devices = device_ids(args.devices)
    for hour in hours:
        if args.realistic:
            frame, anomalies = realistic_hour(devices, hour, seed=args.seed, anomaly_rate=args.anomaly_rate,
                                              **delivery)
        else:
            frame, anomalies = generate_hour(devices, hour, seed=args.seed, anomaly_rate=args.anomaly_rate)
        telemetry.write_hour(store, hour, frame)
        store.write(layout.anomalies_file(hour), parquet_bytes(anomalies))
        print(f"{layout.hour_label(hour)}: {len(frame):,} rows, {len(anomalies)} injected anomalies")
    print(f"telemetry of {len(devices)} devices in {store.url_of(layout.TELEMETRY)}")
    return 0


def train(args: argparse.Namespace) -> int:
    """Fit and publish a new model version; exit 1, publishing nothing, when training must not publish."""
    from flows.train import TrainingRefused, train_fleet
    from scoring import layout

    end = layout.parse_hour(args.end) if args.end else layout.last_full_hour() - timedelta(hours=1)
    start = end - timedelta(hours=args.hours - 1)
    try:
        summary = train_fleet(start=layout.hour_label(start), end=layout.hour_label(end), store=args.store,
                              granularity=args.granularity, cluster=args.cluster, allow_partial=args.allow_partial)
    except TrainingRefused as exc:
        print(f"fleetscore train: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


def score(args: argparse.Namespace) -> int:
    from flows.score import score_fleet

    summary = score_fleet(store=args.store, hour=args.hour, cluster=args.cluster, model_version=args.model_version,
                          step=args.step, max_fill=args.max_fill, min_coverage=args.min_coverage)
    print(json.dumps(summary, indent=1))
    return 0


def import_models(args: argparse.Namespace) -> int:
    """Convert the original sample's pickled models into a new, code-free model version of ``--store``."""
    from flows.trust import signing_key
    from scoring import layout, models, seed_models
    from scoring.store import Store

    target = Store(args.store)
    target.create()
    try:
        manifest, ignored = seed_models.import_models(Store(args.source), args.pattern, target, signing_key())
    except ValueError as exc:
        print(f"fleetscore import-models: {exc}", file=sys.stderr)
        return 1
    if not args.no_activate:
        models.activate(target, manifest["version"])
        models.prune(target, setting("models.keep-versions"))
    print(json.dumps({"version": manifest["version"], "live": not args.no_activate, "models": sorted(manifest["models"]),
                      "ignored": ignored, "manifest": target.url_of(layout.manifest_file(manifest["version"]))},
                     indent=1))
    return 0


def _run_parameters(args: argparse.Namespace) -> dict:
    """Flow parameters shared by ``serve`` and ``backfill``; unset ones fall back to ``fleetscore.*``."""
    return {"store": args.store, "cluster": args.cluster, "adapt_minimum": args.adapt_min,
            "adapt_maximum": args.adapt_max, "granularity": args.granularity}


def serve(args: argparse.Namespace) -> int:
    from flows.deploy import serve_fleet

    serve_fleet(args.cron, **_run_parameters(args))
    return 0


def backfill(args: argparse.Namespace) -> int:
    from flows.backfill import backfill_fleet

    summary = backfill_fleet(start=args.start, end=args.end, force=args.force, changed=args.changed,
                             **_run_parameters(args))
    print(json.dumps(summary, indent=1))
    return 0


def history(args: argparse.Namespace) -> int:
    """The table versions that committed ``--hour``, newest first, with the run and model version of each."""
    from scoring import layout, tables
    from scoring.store import Store

    hour = layout.parse_hour(args.hour)
    rows = tables.history(Store(args.store), hour)
    if not rows:
        print(f"fleetscore history: {layout.hour_label(hour)} was never committed to "
              f"{Store(args.store).url_of(layout.table_dir('predictions'))}", file=sys.stderr)
        return 1
    print(f"{'version':>7}  {'committed (UTC)':<19}  {'claim':>5}  {'rows':>9}  {'model version':<20}  flow run")
    for row in rows:
        print(f"{row['version']:>7}  {row['timestamp']:%Y-%m-%d %H:%M:%S}  {row['claim']:>5}  {row['table_rows']:>9,}  "
              f"{row.get('model_version', '-'):<20}  {row.get('flow_run_id', '-')}")
    return 0


def maintain(args: argparse.Namespace) -> int:
    from flows.maintenance import maintain_tables

    print(json.dumps(maintain_tables(store=args.store, days=args.days, retention=args.retention), indent=1))
    return 0


def _add_cluster_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--cluster", choices=KINDS, help="cluster kind (default: fleetscore.cluster.kind)")


def _add_run_options(sub: argparse.ArgumentParser) -> None:
    """Options of ``serve`` and ``backfill``: the cluster and the models the runs expect."""
    _add_cluster_option(sub)
    sub.add_argument("--adapt-min", type=int, help="fewest workers (default: fleetscore.cluster.adapt)")
    sub.add_argument("--adapt-max", type=int, help="most workers (default: fleetscore.cluster.adapt)")
    sub.add_argument("--granularity", choices=["device", "sensor"],
                     help="fail runs unless the published models have this granularity (default: any)")


def sweep(args: argparse.Namespace) -> int:
    from cluster.sweep import parse_tags, report, sweep_configured

    found, failed = sweep_configured(parse_tags(args.tag), args.older_than, args.dry_run)
    print("\n".join(report(found, failed, args.dry_run)))
    return 1 if failed else 0


class _RealisticDefaults(argparse.HelpFormatter):
    """Help that fills in ``{NAME}`` from :mod:`scoring.realistic`, imported only when help is shown.

    The ``--realistic`` delivery defaults live there, and it imports SciPy: 0.8 s that
    every command would pay just to build its parser.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        from scoring import realistic

        text = super()._get_help_string(action)
        return text and text.format_map(vars(realistic))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fleetscore", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str, **options) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, **options)
        sub.add_argument("--store", default=setting("store"),
                         help="store URL: a path, file://... or az://container/prefix (default: %(default)s)")
        sub.set_defaults(func=func)
        return sub

    gen = command("generate", generate, "write a synthetic fleet's telemetry with recorded anomalies",
                  formatter_class=_RealisticDefaults)
    gen.add_argument("--devices", type=int, default=200, help="number of devices (default: %(default)s)")
    gen.add_argument("--hours", type=int, default=3, help="hours to write (default: %(default)s)")
    gen.add_argument("--end", help="last hour, YYYY-MM-DDTHH UTC (default: the last full hour)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    gen.add_argument("--anomaly-rate", type=float, default=0.05,
                     help="share of devices with an anomaly burst per hour (default: %(default)s)")
    gen.add_argument("--realistic", action="store_true",
                     help="telemetry as real fleets send it: tags stamped apart around the grid, lost, duplicated "
                     "and late readings, smooth correlated signals with a daily drift, 1-5 minute anomalies")
    gen.add_argument("--jitter", type=float, help="with --realistic: largest offset of a reading from its grid "
                     "time, seconds (default: {JITTER_SECONDS})")
    gen.add_argument("--loss", type=float, help="with --realistic: share of readings lost (default: {LOSS})")
    gen.add_argument("--duplicates", type=float,
                     help="with --realistic: share of readings delivered twice (default: {DUPLICATES})")
    gen.add_argument("--late", type=float, help="with --realistic: share of readings that arrive in the next "
                     "hour's file (default: {LATE})")

    fit = command("train", train, "fit and publish one model per device (or sensor) on a window of hours")
    fit.add_argument("--end", help="last hour of the window, YYYY-MM-DDTHH UTC "
                     "(default: the hour before the last full hour, which `score` takes by default)")
    fit.add_argument("--hours", type=int, default=2, help="hours in the window (default: %(default)s)")
    fit.add_argument("--granularity", choices=["device", "sensor"], default="device",
                     help="one model per device over its tags, or per (device, tag) (default: %(default)s)")
    fit.add_argument("--allow-partial", action="store_true",
                     help="publish even if shards were lost or more than fleetscore.models.max-unfitted-share of the "
                     "devices could not be fitted; those keep their previous model and are listed")
    _add_cluster_option(fit)

    run = command("score", score, "score one hour with the score-fleet flow and commit its predictions")
    run.add_argument("--hour", help="hour to score, YYYY-MM-DDTHH UTC (default: the last full hour)")
    run.add_argument("--model-version", help="score with this model version, e.g. to compare with an older one "
                     "(default: the live version)")
    run.add_argument("--step", help="the devices' time grid, e.g. 5s (default: fleetscore.telemetry.step)")
    run.add_argument("--max-fill", type=int, help="fill a missing tag from its previous reading at most this many "
                     "steps back (default: fleetscore.telemetry.max-fill)")
    run.add_argument("--min-coverage", type=float, help="a device with a lower share of complete steps fails "
                     "(default: fleetscore.telemetry.min-coverage)")
    _add_cluster_option(run)

    legacy = command("import-models", import_models,
                     "convert the original sample's pickled scikit-learn pipelines into a new per-sensor model "
                     "version, reading them as data: nothing in them is executed")
    legacy.add_argument("--from", dest="source", required=True, help="folder or store URL holding the model files")
    legacy.add_argument("--pattern", default="model_{device}_{tag}",
                        help="file names, with {device} and {tag} (default: %(default)s)")
    legacy.add_argument("--no-activate", action="store_true",
                        help="write and sign the version but leave the live version as it is")

    hourly = command("serve", serve, "serve score-fleet every hour, backfill-fleet on demand and maintain-tables "
                     "nightly, until Ctrl-C")
    hourly.add_argument("--cron", help="when hourly runs start, a cron line in UTC; each run scores "
                        "the hour before (default: five minutes past every hour)")
    _add_run_options(hourly)

    fill = command("backfill", backfill, "score a range of hours on one cluster, skipping committed hours")
    fill.add_argument("--from", dest="start", required=True, help="first hour, YYYY-MM-DDTHH UTC")
    fill.add_argument("--to", dest="end", required=True, help="last hour, YYYY-MM-DDTHH UTC")
    fill.add_argument("--force", action="store_true", help="rescore hours that are already committed")
    fill.add_argument("--changed", action="store_true",
                      help="also rescore committed hours whose telemetry files changed since (late or re-sent files)")
    _add_run_options(fill)

    versions = command("history", history, "list the table versions that committed an hour: when, by which flow run, "
                       "with which model version (the latest is what readers see)")
    versions.add_argument("--hour", required=True, help="hour, YYYY-MM-DDTHH UTC")

    tidy = command("maintain", maintain, "compact the tables' small files of the last days, then vacuum")
    tidy.add_argument("--days", type=int, help="past days to compact (default: fleetscore.tables.compact-days)")
    tidy.add_argument("--retention", help="keep replaced files younger than this, e.g. 7d "
                      "(default: fleetscore.tables.vacuum-retention)")

    clean = commands.add_parser("sweep", help="delete the Azure VMs, NICs, disks and public IPs crashed runs left",
                                description="delete the Azure VMs, NICs, disks and public IPs crashed runs left, "
                                "by tag and age, in fleetscore.cluster.azure's resource group")
    clean.set_defaults(func=sweep)
    clean.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    clean.add_argument("--older-than", help="only resources created longer ago, e.g. 30m, 6h, 2d; 0 for any age "
                       "(default: fleetscore.sweep.older-than)")
    clean.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                       help="tag a resource must carry, repeatable, e.g. fleetscore-flow-run=<id> "
                       "(default: fleetscore.cluster.azure.tags)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
