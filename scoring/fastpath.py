"""A NumPy evaluation of the standard model, ``Pipeline(StandardScaler, OneClassSVM(kernel="rbf"))``.

scikit-learn spends most of a 720-row prediction in input validation and in
libsvm's one-kernel-value-at-a-time loop, and ``predict`` repeats all of it
after ``decision_function``. The decision function of a fitted RBF one-class
SVM is small enough to evaluate directly from the fitted parameters::

    z = (x - mean) / scale
    score(x) = sum_i coef_i * exp(-gamma * |z - sv_i|^2) + intercept

which is several times faster and equal to scikit-learn's to about 1e-15.
Those parameters are also what :mod:`scoring.model_format` stores, so a
published standard model is scored without scikit-learn or unpickling.
Any other model (another kernel, another scaler, a bare SVM, an isolation
forest...) is scored by its own methods, so the fast path never changes what a
model means. Which score is an anomaly is decided in :mod:`scoring.predict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scikit-learn is imported where used: a worker scoring stored arrays starts without it
    from sklearn.base import BaseEstimator
    from sklearn.pipeline import Pipeline

BOUNDARY_MARGIN = 1e-10
"""Relative band around score 0 in which a row is re-scored by scikit-learn.

libsvm calls a row normal only when its score is > 0, so a row that lands on
the boundary is an anomaly. Our sum runs in another order than libsvm's and
may differ in the last bits; inside this band (scaled by the size of the
terms) the score is taken from scikit-learn itself, so its sign is always
libsvm's. Real rows almost never land there.
"""


@dataclass(frozen=True, eq=False)
class CompiledOCSVM:
    """The fitted parameters of a standard model, laid out for vectorised scoring.

    Built from a fitted pipeline by :func:`compile_model`, or from stored arrays
    by :meth:`from_arrays`; keep it when scoring the same model many times.
    ``model`` is the fitted pipeline when there is one; without it,
    :attr:`reference` rebuilds scikit-learn's model from the arrays, only when a
    row lands on the boundary.
    """

    mean: np.ndarray
    scale: np.ndarray
    support: np.ndarray
    coef: np.ndarray
    intercept: float
    gamma: float
    model: Pipeline | None = None
    support_sq: np.ndarray = field(init=False)
    margin: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "support_sq", (self.support * self.support).sum(axis=1))
        object.__setattr__(self, "margin", BOUNDARY_MARGIN * (np.abs(self.coef).sum() + abs(self.intercept)))

    @classmethod
    def from_arrays(cls, mean: np.ndarray, scale: np.ndarray, support: np.ndarray, coef: np.ndarray,
                    intercept: float, gamma: float) -> CompiledOCSVM:
        """A model from its parameters, as float64 C arrays (what scoring multiplies)."""
        as_float = lambda a: np.ascontiguousarray(a, dtype="float64")  # noqa: E731
        return cls(as_float(mean), as_float(scale), as_float(support), as_float(coef).ravel(),
                   float(intercept), float(gamma))

    @property
    def n_features_in_(self) -> int:
        """The number of features the model was fitted on, as scikit-learn names it."""
        return len(self.mean)

    @cached_property
    def reference(self) -> Pipeline:
        """scikit-learn's own model with these parameters: the fitted one, or rebuilt by :func:`to_pipeline`."""
        return self.model if self.model is not None else to_pipeline(self)

    def _sum(self, X: np.ndarray) -> np.ndarray:
        """The decision function in NumPy's summation order.

        Squared distances use ``|z|^2 + |sv|^2 - 2 z.sv`` (one matrix product).
        Where ``|z|^2`` overflows the true distance is huge and the kernel 0,
        so NaN from ``inf - inf`` is read as an infinite distance.
        """
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is read as distance inf below
            Z = (X - self.mean) / self.scale
            sq = np.einsum("ij,ij->i", Z, Z)[:, None] + self.support_sq - 2.0 * (Z @ self.support.T)
        np.maximum(sq, 0.0, out=sq)
        np.copyto(sq, np.inf, where=np.isnan(sq))
        sq *= -self.gamma
        return np.exp(sq, out=sq) @ self.coef + self.intercept

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The model's ``decision_function``, whose sign is always libsvm's.

        Rows within :data:`BOUNDARY_MARGIN` of 0 are re-scored by scikit-learn.
        Raises ``ValueError`` for NaN or infinite input, as scikit-learn does.
        """
        X = _checked(X)
        score = self._sum(X)
        near = np.flatnonzero(np.abs(score) <= self.margin)
        if len(near):
            score[near] = self.reference.decision_function(X[near])
        return score


def _checked(X: np.ndarray) -> np.ndarray:
    """``X`` as float64, refusing what scikit-learn refuses (NaN, infinity) with ``ValueError``."""
    X = np.asarray(X, dtype="float64")
    if not np.isfinite(X).all():
        raise ValueError("input holds NaN or infinite values")
    return X


def is_standard(model: BaseEstimator) -> bool:
    """True for a fitted ``Pipeline(StandardScaler(), OneClassSVM(kernel="rbf"))`` on dense data.

    Exact types only: a subclass may change ``transform`` or the decision.
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

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
    if not is_standard(model):
        return None
    scaler, svm = model.steps[0][1], model.steps[1][1]
    compiled = CompiledOCSVM.from_arrays(scaler.mean_, scaler.scale_, svm.support_vectors_, svm.dual_coef_,
                                         svm.intercept_[0], svm._gamma)  # fitted gamma: 'scale' resolved
    return replace(compiled, model=model)


def to_pipeline(compiled: CompiledOCSVM) -> Pipeline:
    """A current scikit-learn pipeline holding exactly these fitted parameters.

    scikit-learn has no public constructor from fitted parameters, so the fitted
    attributes libsvm's ``decision_function`` reads are set as ``fit`` would set
    them (checked against a fitted model in ``tests/scoring/test_model_format.py``).
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    n_support, n_features = compiled.support.shape
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_, scaler.var_ = compiled.mean, compiled.scale, compiled.scale ** 2
    scaler.n_features_in_, scaler.n_samples_seen_ = n_features, np.int64(n_support)
    svm = OneClassSVM(kernel="rbf", gamma=compiled.gamma)
    intercept = np.array([compiled.intercept])
    dual = compiled.coef.reshape(1, -1)
    fitted = {
        "_sparse": False, "n_features_in_": n_features, "_effective_probability": False,
        "_gamma": compiled.gamma, "support_": np.arange(n_support, dtype=np.int32),
        "support_vectors_": compiled.support, "_n_support": np.array([n_support, 0], dtype=np.int32),
        "dual_coef_": dual, "_dual_coef_": dual, "intercept_": intercept, "_intercept_": intercept,
        "offset_": -intercept, "_probA": np.empty(0), "_probB": np.empty(0), "fit_status_": 0,
        "shape_fit_": (n_support, n_features), "_num_iter": np.zeros(1, dtype=np.int32), "n_iter_": 0,
    }
    for name, value in fitted.items():
        setattr(svm, name, value)
    return Pipeline([("standardscaler", scaler), ("oneclasssvm", svm)])
