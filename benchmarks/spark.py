"""Scoring an hour with Spark: ``groupBy("device").applyInPandas`` in local mode (pyspark is the ``bench`` extra)."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

from scoring import layout
from scoring.models import Manifest
from scoring.store import Store

OUTPUT_SCHEMA = "ts long, device string, score double, anomaly int"


def session(workers: int) -> SparkSession:
    """A local Spark with one core per worker; Parquet nanosecond timestamps read as longs."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers need this venv's packages
    return (
        SparkSession.builder.master(f"local[{workers}]")
        .appName("fleetscore-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "2g")
        .config("spark.sql.shuffle.partitions", str(workers * 4))
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )


def _scorer(store: Store, manifest: Manifest):
    """The function run per device group on Spark's Python workers."""
    entries = manifest["models"]

    def score(rows: pd.DataFrame) -> pd.DataFrame:
        from benchmarks.contenders import model_file, pivot_and_score

        entry = entries[str(rows["device"].iloc[0])]
        out = pivot_and_score(model_file(store, entry), rows, entry["features"])
        return out.assign(ts=out["ts"].astype("int64"), anomaly=out["anomaly"].astype("int32"))

    return score


def score_hour(spark: SparkSession, store: Store, hour: datetime, manifest: Manifest, out: Path) -> Any:
    """Read the hour's Parquet files, score every device in its own group, write Parquet to ``out``."""
    rows = spark.read.parquet(store.path(layout.telemetry_dir(hour)))
    scored = rows.groupBy("device").applyInPandas(_scorer(store, manifest), schema=OUTPUT_SCHEMA)
    scored.write.mode("overwrite").parquet(str(out))
