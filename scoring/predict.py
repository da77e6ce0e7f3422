"""Scoring and fitting one model: (model, features) to predictions, features to a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from scoring import fastpath
from scoring.fastpath import CompiledOCSVM
from scoring.records import Features

if TYPE_CHECKING:  # scikit-learn is imported where used: a worker scoring stored arrays starts without it
    from sklearn.base import BaseEstimator
    from sklearn.pipeline import Pipeline

PREDICTIONS = pa.schema([("ts", pa.timestamp("us", "UTC")), ("device", pa.large_string()), ("tag", pa.large_string()),
                         ("score", pa.float64()), ("anomaly", pa.int8()), ("model_sha256", pa.large_string())])
"""The predictions table's columns: one row per scored timestamp of a model (``tag`` null for a per-device one)."""

BUILT = pa.schema([f.with_type(pa.dictionary(pa.int32(), f.type)) if pa.types.is_large_string(f.type) else f
                   for f in PREDICTIONS])
""":data:`PREDICTIONS` as a batch builds them: text as codes into the batch's few names, which the Parquet
writer takes as they are (a string per row, 72,000 for 100 devices, built and hashed again cost a tenth of a batch)."""


def fit_model(X: np.ndarray, nu: float, gamma: str | float) -> Pipeline:
    """Fit the standard per-device model, ``StandardScaler`` then an RBF ``OneClassSVM``.

    ``nu`` bounds the share of training rows treated as outliers; scaling first
    lets one ``gamma`` suit tags whose ranges differ by an order of magnitude.
    """
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"need a 2-D matrix of at least 2 rows to fit, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("training matrix holds NaN or infinite values")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    return make_pipeline(StandardScaler(), OneClassSVM(kernel="rbf", nu=nu, gamma=gamma)).fit(X)


def is_anomaly(score: np.ndarray) -> np.ndarray:
    """The one-class SVM's rule: a row is normal only when its decision value is > 0 (libsvm's ``predict``)."""
    return score <= 0.0


def predict(model: BaseEstimator | CompiledOCSVM, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(score, anomaly)``: ``decision_function`` and 1 for anomaly, 0 for normal.

    1/0 is the original sample's convention; scikit-learn's ``predict`` says -1/1.
    The standard model is scored by :mod:`scoring.fastpath` (same numbers, several
    times faster) with :func:`is_anomaly`; any other model by its own
    ``decision_function`` and ``predict``, whose rule is its own.
    Raises ``ValueError`` when the model expects another number of features.
    """
    expected = getattr(model, "n_features_in_", X.shape[1])
    if X.shape[1] != expected:
        raise ValueError(f"model expects {expected} features, telemetry gives {X.shape[1]}")
    compiled = model if isinstance(model, CompiledOCSVM) else fastpath.compile_model(model)
    if compiled is not None:
        score = compiled.decision_function(X)
        return score, is_anomaly(score).astype("int8")
    score = np.asarray(model.decision_function(X), dtype="float64").ravel()
    return score, (np.asarray(model.predict(X)).ravel() == -1).astype("int8")


def predictions_table(
    scored: Sequence[tuple[Features, np.ndarray, np.ndarray, str]],
) -> pa.Table:
    """Concatenate ``(features, score, anomaly, model_sha256)`` of many models into one Arrow table.

    Built as Arrow arrays straight from NumPy (:data:`BUILT`): no pandas frame between
    the scores and the file.
    """
    if not scored:
        return BUILT.empty_table()
    sizes = [len(f.ts) for f, *_ in scored]
    ts = np.concatenate([f.ts for f, *_ in scored]).astype("datetime64[us]")
    return pa.table([
        pa.array(ts, PREDICTIONS.field("ts").type),
        _repeated([f.key[0] for f, *_ in scored], sizes),
        _repeated([f.key[1] for f, *_ in scored], sizes),
        pa.array(np.concatenate([s for _, s, _, _ in scored]), pa.float64()),
        pa.array(np.concatenate([a for _, _, a, _ in scored]).astype("int8")),
        _repeated([h for *_, h in scored], sizes),
    ], schema=BUILT)


def _repeated(values: Sequence[str | None], sizes: Sequence[int]) -> pa.DictionaryArray:
    """Each value repeated ``sizes`` times, as codes into the distinct values (``None``: a null code).

    Each name is in the dictionary once: the Parquet writer takes the dictionary as the page it
    writes, sized for every entry but filled once per distinct one, and duplicates (a device's
    per-tag models, a run of null tags) left the rest of the page as memory happened to hold it,
    so a rerun could write other bytes.
    """
    names = pa.array(values, pa.large_string()).dictionary_encode()
    return names.take(pa.array(np.repeat(np.arange(len(values), dtype=np.int32), sizes)))
