"""How a fitted model becomes bytes in the store, and back, without running code on load.

Three formats, one table (:data:`FORMATS`), named in each manifest entry:

``ocsvm-arrays`` (``.f64``)
    The standard model, ``StandardScaler`` then an RBF ``OneClassSVM``, as one
    vector of little-endian float64 and nothing else: a header
    ``[layout version, n_features, n_support, gamma, intercept]``, then
    ``mean`` and ``scale`` (n_features each), the dual coefficients (n_support)
    and the support vectors (n_support x n_features, row-major). Reading it is
    ``numpy.frombuffer``: nothing to parse, nothing executed; it builds a
    :class:`~scoring.fastpath.CompiledOCSVM`, which scores directly. Feature
    order is in the manifest entry. (Not ``.npy``: parsing its text header
    alone costs more than the rest of a load.)
``skops`` (``.skops``)
    Any other scikit-learn estimator, through ``skops.io``, which rebuilds only
    types it trusts: scikit-learn's estimators, plus the types a
    :class:`ModelPolicy` lists (``fleetscore.models.skops-trusted``).
``joblib`` (``.joblib``)
    A pickle. Loading one runs whatever code it holds, so it is refused unless
    the policy allows pickles (``fleetscore.models.allow-pickle``); fleetscore
    never writes one.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from scoring.fastpath import CompiledOCSVM, compile_model

if TYPE_CHECKING:  # skops, joblib and scikit-learn are imported where used: reading arrays needs none of them
    from sklearn.base import BaseEstimator

ARRAYS_LAYOUT = 1
"""Version of the ``ocsvm-arrays`` vector layout, its first element."""
_HEADER = 5


@dataclass(frozen=True)
class ModelPolicy:
    """What a reader may load besides plain arrays; the safe default allows no pickle and no extra types.

    Built by the flows from ``fleetscore.models`` settings and passed to workers
    with each batch, never read from the store (whoever writes models must not
    choose how they are read).
    """

    allow_pickle: bool = False
    trusted: tuple[str, ...] = ()


def encode_arrays(compiled: CompiledOCSVM) -> bytes:
    """The ``ocsvm-arrays`` bytes of a standard model."""
    n_support, n_features = compiled.support.shape
    header = [ARRAYS_LAYOUT, n_features, n_support, compiled.gamma, compiled.intercept]
    vector = np.concatenate([header, compiled.mean, compiled.scale, compiled.coef, compiled.support.ravel()])
    return vector.astype("<f8").tobytes()


def decode_arrays(data: bytes) -> CompiledOCSVM:
    """A standard model from ``ocsvm-arrays`` bytes, or ``ValueError`` saying what is wrong with them."""
    if len(data) % 8 or len(data) < 8 * _HEADER:
        raise ValueError(f"ocsvm-arrays holds whole float64 values, at least {_HEADER}; got {len(data)} bytes")
    vector = np.frombuffer(data, dtype="<f8")
    layout, n_features, n_support, gamma, intercept = vector[:_HEADER].tolist()
    if layout != ARRAYS_LAYOUT or n_features < 1 or n_support < 1:
        raise ValueError(f"ocsvm-arrays header is not layout {ARRAYS_LAYOUT} with features and support vectors")
    f, s = int(n_features), int(n_support)
    if len(vector) != _HEADER + 2 * f + s + s * f:
        raise ValueError(f"ocsvm-arrays holds {len(vector)} values, its header announces {_HEADER + 2 * f + s + s * f}")
    body = vector[_HEADER:]
    if not np.isfinite(vector).all() or gamma <= 0 or body[f:2 * f].min() <= 0:
        raise ValueError("ocsvm-arrays holds non-finite values, a gamma <= 0 or a scale <= 0")
    return CompiledOCSVM.from_arrays(body[:f], body[f:2 * f], body[2 * f + s:].reshape(s, f),
                                     body[2 * f:2 * f + s], intercept, gamma)


def _decode_skops(data: bytes, policy: ModelPolicy) -> BaseEstimator:
    import skops.io

    return skops.io.loads(data, trusted=list(policy.trusted))


def _decode_joblib(data: bytes, policy: ModelPolicy) -> BaseEstimator:
    if not policy.allow_pickle:
        raise ValueError("model is a pickle and fleetscore.models.allow-pickle is false; refusing to unpickle it "
                         "(retrain, or import it with `fleetscore import-models`)")
    import joblib

    return joblib.load(io.BytesIO(data))


@dataclass(frozen=True)
class Format:
    """One way of storing a model: its file suffix and its reader."""

    suffix: str
    decode: Callable[[bytes, ModelPolicy], Any]


FORMATS: dict[str, Format] = {
    "ocsvm-arrays": Format(".f64", lambda data, policy: decode_arrays(data)),
    "skops": Format(".skops", _decode_skops),
    "joblib": Format(".joblib", _decode_joblib),
}


def encode(model: BaseEstimator | CompiledOCSVM) -> tuple[str, bytes]:
    """``(format, bytes)`` of a fitted model: plain arrays for the standard model, skops for any other."""
    compiled = model if isinstance(model, CompiledOCSVM) else compile_model(model)
    if compiled is not None:
        return "ocsvm-arrays", encode_arrays(compiled)
    import skops.io

    return "skops", skops.io.dumps(model)


def decode(fmt: str, data: bytes, policy: ModelPolicy) -> BaseEstimator | CompiledOCSVM:
    """A model from its bytes, or ``ValueError`` naming why it was refused (format, pickle, untrusted type)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown model format {fmt!r}; known: {', '.join(FORMATS)}")
    try:
        return FORMATS[fmt].decode(data, policy)
    except ValueError:
        raise
    except Exception as exc:  # skops and joblib raise many kinds on untrusted or damaged input
        raise ValueError(f"{fmt} model cannot be loaded: {type(exc).__name__}: {exc}") from None
