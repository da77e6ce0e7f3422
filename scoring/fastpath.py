"""A NumPy evaluation of the standard model, ``Pipeline(StandardScaler, OneClassSVM(kernel="rbf"))``.

scikit-learn spends most of a 720-row prediction in input validation and in
libsvm's one-kernel-value-at-a-time loop, and ``predict`` repeats all of it
after ``decision_function``. The decision function of a fitted RBF one-class
SVM is small enough to evaluate directly from the fitted parameters::

    z = (x - mean) / scale
    score(x) = sum_i coef_i * exp(-gamma * |z - sv_i|^2) + intercept

which is several times faster and equal to scikit-learn's to about 1e-15.
Any other model (another kernel, another scaler, a bare SVM, an isolation
forest...) is scored by its own methods, so the fast path never changes what a
model means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

BOUNDARY_MARGIN = 1e-10
"""Relative band around score 0 in which a row is re-scored by scikit-learn.

libsvm calls a row normal only when its score is > 0, so a row that lands on
the boundary is an anomaly. Our sum runs in another order than libsvm's and
may differ in the last bits; inside this band (scaled by the size of the
terms) the sign is taken from scikit-learn itself, so ``anomaly`` always
equals ``predict(X) == -1``. Real rows almost never land there.
"""


@dataclass(frozen=True, eq=False)
class CompiledOCSVM:
    """The fitted parameters of a standard model, laid out for vectorised scoring.

    Built once per model by :func:`compile_model`; keep it when scoring the same
    model many times, so the parameters are not extracted again.
    """

    model: Pipeline
    mean: np.ndarray
    scale: np.ndarray
    support: np.ndarray
    support_sq: np.ndarray
    coef: np.ndarray
    intercept: float
    gamma: float
    margin: float

    @property
    def n_features_in_(self) -> int:
        """The number of features the model was fitted on, as scikit-learn names it."""
        return len(self.mean)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The model's ``decision_function``, computed with NumPy.

        Squared distances use ``|z|^2 + |sv|^2 - 2 z.sv`` (one matrix product).
        Where ``|z|^2`` overflows the true distance is huge and the kernel 0,
        so NaN from ``inf - inf`` is read as an infinite distance.
        """
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is read as distance inf below
            Z = (X - self.mean) / self.scale
            sq = np.einsum("ij,ij->i", Z, Z)[:, None] + self.support_sq - 2.0 * (Z @ self.support.T)
        sq = np.nan_to_num(np.maximum(sq, 0.0), nan=np.inf)
        return np.exp(-self.gamma * sq) @ self.coef + self.intercept

    def score(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(decision_function, anomaly)`` with ``anomaly == (model.predict(X) == -1)``."""
        X = _checked(X)
        score = self.decision_function(X)
        anomaly = score <= 0.0
        near = np.flatnonzero(np.abs(score) <= self.margin)
        if len(near):
            score[near] = self.model.decision_function(X[near])
            anomaly[near] = self.model.predict(X[near]) == -1
        return score, anomaly


def _checked(X: np.ndarray) -> np.ndarray:
    """``X`` as float64, refusing what scikit-learn refuses (NaN, infinity) with ``ValueError``."""
    X = np.asarray(X, dtype="float64")
    if not np.isfinite(X).all():
        raise ValueError("input holds NaN or infinite values")
    return X


def _is_standard(model: BaseEstimator) -> bool:
    """True for a fitted ``Pipeline(StandardScaler(), OneClassSVM(kernel="rbf"))`` on dense data.

    Exact types only: a subclass may change ``transform`` or the decision.
    """
    if type(model) is not Pipeline or len(model.steps) != 2:
        return False
    scaler, svm = model.steps[0][1], model.steps[1][1]
    return (
        type(scaler) is StandardScaler and scaler.with_mean and scaler.with_std
        and type(svm) is OneClassSVM and svm.kernel == "rbf"
        and isinstance(getattr(svm, "support_vectors_", None), np.ndarray)  # fitted, not sparse
    )


def compile_model(model: BaseEstimator) -> CompiledOCSVM | None:
    """The compiled form of a standard model, or ``None`` for any other model."""
    if not _is_standard(model):
        return None
    scaler, svm = model.steps[0][1], model.steps[1][1]
    support = np.ascontiguousarray(svm.support_vectors_, dtype="float64")
    coef = np.ascontiguousarray(svm.dual_coef_, dtype="float64").ravel()
    intercept = float(svm.intercept_[0])
    return CompiledOCSVM(
        model=model,
        mean=np.asarray(scaler.mean_, dtype="float64"),
        scale=np.asarray(scaler.scale_, dtype="float64"),
        support=support,
        support_sq=np.einsum("ij,ij->i", support, support),
        coef=coef,
        intercept=intercept,
        gamma=float(svm._gamma),  # the fitted value: 'scale' and 'auto' resolved at fit time
        margin=BOUNDARY_MARGIN * (np.abs(coef).sum() + abs(intercept)),
    )


def score(model: BaseEstimator | CompiledOCSVM, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(decision_function, anomaly as bool)`` of any fitted outlier detector.

    The standard model goes through :class:`CompiledOCSVM`; any other model
    through its own ``decision_function`` and ``predict`` (-1 is an anomaly).
    """
    compiled = model if isinstance(model, CompiledOCSVM) else compile_model(model)
    if compiled is not None:
        return compiled.score(X)
    values = np.asarray(model.decision_function(X), dtype="float64").ravel()
    return values, np.asarray(model.predict(X)).ravel() == -1
