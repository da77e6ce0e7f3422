"""Import the original sample's models: legacy scikit-learn pickles read as data, never run as code.

The sample published its 15 models (``model_<device>_<tag>``) as plain pickles
of ``Pipeline([StandardScaler(), OneClassSVM(kernel="rbf")])`` written by
scikit-learn 0.19.2. Unpickling them would run whatever they hold, and their
module paths (``sklearn.svm.classes``...) no longer exist. :class:`LegacyUnpickler`
resolves only the handful of class paths such a pipeline refers to, each to an
inert stand-in that records the state it is given; any other global (``os.system``,
``builtins.eval``, a newer estimator) stops the read before anything is called.
The recorded parameters become the array format of :mod:`scoring.model_format`.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from scoring import layout, models
from scoring.fastpath import CompiledOCSVM
from scoring.records import ModelKey, key_name
from scoring.signing import SigningKey
from scoring.store import Store, sha256

NUMERIC_KINDS = "fiub"
"""Array element kinds a legacy model may hold: numbers and booleans, never Python objects."""


class _Recorded:
    """An inert stand-in for an estimator: ``BUILD`` hands it the state dict, which it keeps."""

    state: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{type(self).__name__} state is a {type(state).__name__}, not a dict")
        self.state = state


class _Pipeline(_Recorded):
    pass


class _StandardScaler(_Recorded):
    pass


class _OneClassSVM(_Recorded):
    pass


class _NDArray:
    """Stands for ``numpy.ndarray`` as the argument of ``_reconstruct``; never instantiated by the pickle."""

    def __new__(cls, *args: Any) -> _NDArray:
        raise pickle.UnpicklingError("numpy.ndarray may only appear as the type given to _reconstruct")


class _DType:
    """``numpy.dtype(name, align, copy)`` for numeric names only; ``BUILD`` gives the byte order."""

    def __init__(self, name: Any, align: Any = 0, copy: Any = 1) -> None:
        if not isinstance(name, str):
            raise pickle.UnpicklingError(f"dtype name {name!r} is not a string")
        base = np.dtype(name)
        if base.kind not in NUMERIC_KINDS:
            raise pickle.UnpicklingError(f"arrays of dtype {name!r} are refused: only numbers are model parameters")
        self.dtype = base

    def __setstate__(self, state: Any) -> None:
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _Array:
    """An array rebuilt from ``(version, shape, dtype, fortran, raw bytes)`` with ``frombuffer``: no objects."""

    value: np.ndarray

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _DType)
                and isinstance(state[4], bytes)):
            raise pickle.UnpicklingError("an array's state is not (version, shape, numeric dtype, order, bytes)")
        _, shape, dtype, fortran, raw = state
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        self.value = flat.reshape(tuple(shape), order="F" if fortran else "C").astype(dtype.dtype.newbyteorder("="))


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
    if cls is not _NDArray:
        raise pickle.UnpicklingError("_reconstruct may only build numpy arrays")
    return _Array()


def _scalar(dtype: Any, raw: Any) -> Any:
    if not isinstance(dtype, _DType) or not isinstance(raw, bytes):
        raise pickle.UnpicklingError("a numpy scalar must be a numeric dtype and its bytes")
    return np.frombuffer(raw, dtype=dtype.dtype)[0].item()


KNOWN: dict[tuple[str, str], Any] = {
    ("sklearn.pipeline", "Pipeline"): _Pipeline,
    **{(m, "StandardScaler"): _StandardScaler for m in ("sklearn.preprocessing.data", "sklearn.preprocessing._data")},
    **{(m, "OneClassSVM"): _OneClassSVM for m in ("sklearn.svm.classes", "sklearn.svm._classes")},
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): _NDArray,
    ("numpy", "dtype"): _DType,
}
"""Every global a legacy standard pipeline may name (0.19 and current module paths), and its stand-in."""


class LegacyUnpickler(pickle.Unpickler):
    """Resolves only :data:`KNOWN` globals, to stand-ins; anything else is refused before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return KNOWN[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refers to {module}.{name}, which is not one of the scikit-learn and NumPy classes of a "
                "StandardScaler + OneClassSVM pipeline"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent references are refused")


def _array(state: Mapping[str, Any], name: str, *fallbacks: str) -> np.ndarray:
    for key in (name, *fallbacks):
        value = state.get(key)
        if isinstance(value, _Array):
            return value.value
    raise ValueError(f"has no {name} array")


def _parameters(pipeline: Any) -> tuple[CompiledOCSVM, str]:
    """The arrays of a recorded standard pipeline and the scikit-learn version that wrote it."""
    steps = pipeline.state.get("steps") if isinstance(pipeline, _Pipeline) else None
    if not (isinstance(steps, list) and len(steps) == 2 and all(isinstance(s, tuple) and len(s) == 2 for s in steps)):
        raise ValueError("is not a two-step Pipeline")
    scaler, svm = steps[0][1], steps[1][1]
    if not (isinstance(scaler, _StandardScaler) and isinstance(svm, _OneClassSVM)):
        raise ValueError("is not StandardScaler then OneClassSVM")
    if not (scaler.state.get("with_mean", True) and scaler.state.get("with_std", True)):
        raise ValueError("scales without mean or without std, which the array format does not hold")
    if svm.state.get("kernel") != "rbf" or svm.state.get("_sparse"):
        sparse = " on sparse data" if svm.state.get("_sparse") else ""
        raise ValueError(f"has kernel {svm.state.get('kernel')!r}{sparse}; "
                         "only dense RBF models are imported")
    gamma = svm.state.get("_gamma", svm.state.get("gamma"))
    if not isinstance(gamma, (int, float)):
        raise ValueError(f"has no fitted gamma (got {gamma!r})")
    # libsvm scores with the underscored copies; for a one-class SVM they equal the public ones
    compiled = CompiledOCSVM.from_arrays(_array(scaler.state, "mean_"), _array(scaler.state, "scale_"),
                                         _array(svm.state, "support_vectors_"),
                                         _array(svm.state, "_dual_coef_", "dual_coef_"),
                                         _array(svm.state, "_intercept_", "intercept_")[0], gamma)
    if compiled.support.shape[1] != len(compiled.mean) or len(compiled.coef) != len(compiled.support):
        raise ValueError("has arrays whose shapes do not fit together")
    return compiled, str(svm.state.get("_sklearn_version", "unknown"))


def read_legacy_model(data: bytes) -> tuple[CompiledOCSVM, str]:
    """``(model, sklearn version)`` from a legacy pickle of the standard pipeline, or ``ValueError`` saying why not.

    Nothing in ``data`` is executed: unknown globals are refused by :class:`LegacyUnpickler`.
    """
    try:
        recorded = LegacyUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # any malformed or hostile stream: refused, and nothing was called
        raise ValueError(f"cannot be read as a legacy scikit-learn pipeline: {exc}") from None
    return _parameters(recorded)


def name_pattern(pattern: str) -> re.Pattern[str]:
    """``model_{device}_{tag}`` as a regular expression over file names (device shortest, tag the rest)."""
    if pattern.count("{device}") != 1 or pattern.count("{tag}") != 1:
        raise ValueError(f"--pattern must hold {{device}} and {{tag}} once each, e.g. 'model_{{device}}_{{tag}}', "
                         f"not {pattern!r}")
    parts = re.split(r"(\{device\}|\{tag\})", pattern)
    groups = {"{device}": "(?P<device>.+?)", "{tag}": "(?P<tag>.+?)"}
    return re.compile("".join(groups.get(p, re.escape(p)) for p in parts))


def import_models(source: Store, pattern: str, target: Store, key: SigningKey | None = None,
                  per_pack: int = 100) -> tuple[models.Manifest, list[str]]:
    """Convert every file of ``source`` named like ``pattern`` into a new per-sensor version of ``target``.

    All or nothing: one file that is not a legacy standard pipeline refuses the
    import with its name and reason, and nothing is published. The version is
    written and signed but not made live (:func:`scoring.models.activate`).
    Returns the manifest and the files of ``source`` that did not match ``pattern``.
    """
    regex = name_pattern(pattern)
    matched: dict[ModelKey, str] = {}
    ignored = []
    for path in source.list(""):
        found = regex.fullmatch(path.rsplit("/", 1)[-1])
        if found is None:
            ignored.append(path)
            continue
        device, tag = found["device"], found["tag"]
        key_ = (layout.check_id(device), layout.check_id(tag, "tag"))
        matched[key_] = path
    if not matched:
        raise ValueError(f"no file of {source.url} is named like {pattern!r}")
    read, problems, versions, digests = {}, [], {}, {}
    for key_, path in sorted(matched.items()):
        data = source.read(path)
        digests[key_] = sha256(data)
        try:
            read[key_], versions[key_] = read_legacy_model(data)
        except ValueError as exc:
            problems.append(f"{source.url_of(path)} {exc}")
    if problems:
        raise ValueError("imported nothing: " + "; ".join(problems))
    version = models.new_version()
    keys = sorted(read)
    entries, packs = {}, {}
    for shard, start in enumerate(range(0, len(keys), per_pack)):
        chunk = {k: read[k] for k in keys[start:start + per_pack]}
        shard_entries, pack = models.publish_pack(target, version, shard, chunk, {k: ["value"] for k in chunk}, None)
        entries |= shard_entries
        packs |= pack
    for key_ in keys:
        entry = entries[key_name(key_)]
        entry["sklearn_version"] = versions[key_]
        entry["imported_from"] = {"file": source.url_of(matched[key_]), "sha256": digests[key_]}
    return models.write_manifest(target, version, "sensor", None, entries, packs, key), ignored
