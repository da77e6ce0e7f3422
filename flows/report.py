"""What a run tells its users: a summary dict, a log line, and Prefect artifacts for the UI."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from scoring import layout
from scoring.batch import STAT_COLUMNS, BatchResult
from scoring.records import Failure
from scoring.store import Store

TOP_DEVICES = 20
FAILURES_SHOWN = 50


class TooManyFailures(RuntimeError):
    """More devices failed than the configured share allows; the hour is still committed."""


def model_stats(results: Sequence[BatchResult]) -> pd.DataFrame:
    """Per-model rows, anomalies and lowest score over all batches."""
    frames = [r.stats for r in results if r.scored]
    if not frames:
        return pd.DataFrame(columns=list(STAT_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def summary(store: Store, hour: datetime, marker: dict[str, Any], failures: Sequence[Failure],
            stats: pd.DataFrame, seconds: float, dashboard: str | None, workers: int) -> dict[str, Any]:
    """The run's outcome as plain data: returned by the flow and shown in the UI."""
    failed_devices = {f.device for f in failures}
    return {
        "hour": layout.hour_label(hour),
        "predictions": store.path(layout.predictions_dir(hour)),
        "models_scored": marker["models_scored"],
        "devices_scored": int(stats["device"].nunique()),
        "devices_failed": len(failed_devices),
        "rows": marker["rows"],
        "anomalies": marker["anomalies"],
        "devices_with_anomalies": int((stats.groupby("device")["anomalies"].sum() > 0).sum()),
        "seconds": round(seconds, 2),
        "workers": workers,
        "dashboard": dashboard,
    }


def one_line(summary: dict[str, Any]) -> str:
    return (
        f"{summary['hour']}: {summary['devices_scored']} devices scored, "
        f"{summary['anomalies']} anomalous rows on {summary['devices_with_anomalies']} devices, "
        f"{summary['devices_failed']} devices failed, {summary['seconds']:.1f}s; "
        f"predictions in {summary['predictions']}"
    )


def _markdown(summary: dict[str, Any], failures: Sequence[Failure]) -> str:
    lines = [f"# Fleet scoring {summary['hour']} UTC", "", "| | |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in summary.items()]
    if failures:
        lines += ["", f"## Failed ({len(failures)})", "", "| device | tag | file | reason |", "|---|---|---|---|"]
        lines += [f"| {f.device[:60]} | {f.tag or ''} | {f.file} | {f.reason[:200]} |"
                  for f in failures[:FAILURES_SHOWN]]
    return "\n".join(lines)


def publish(summary: dict[str, Any], stats: pd.DataFrame, failures: Sequence[Failure]) -> None:
    """Markdown summary and a table of the most anomalous devices, attached to the flow run."""
    key = f"score-{summary['hour'].lower().replace(':', '-')}"
    create_markdown_artifact(_markdown(summary, failures), key=f"{key}-summary",
                             description=f"Fleet scoring summary for {summary['hour']}")
    top = stats.sort_values(["anomalies", "min_score"], ascending=[False, True]).head(TOP_DEVICES)
    create_table_artifact(top.astype({"tag": "object"}).where(top.notna(), None).to_dict("records"),
                          key=f"{key}-top-devices",
                          description=f"Most anomalous devices in {summary['hour']}")


def enforce_failure_share(summary: dict[str, Any], max_share: float) -> None:
    """Fail the run (after committing) when too many devices failed."""
    total = summary["devices_scored"] + summary["devices_failed"]
    if total and summary["devices_failed"] / total > max_share:
        raise TooManyFailures(
            f"{summary['devices_failed']} of {total} devices failed in {summary['hour']}, "
            f"more than fleetscore.scoring.max-failed-share={max_share}"
        )
