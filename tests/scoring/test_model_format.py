"""The array format of the standard model: exact round trip, scikit-learn's decisions, damaged bytes refused."""

import io

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from scoring.fastpath import compile_model, to_pipeline
from scoring.model_format import ModelPolicy, decode, decode_arrays, encode, encode_arrays
from scoring.predict import fit_model


@pytest.fixture(scope="module", params=[0.05, "scale"], ids=["gamma-float", "gamma-scale"])
def fitted(request):
    return fit_model(np.random.default_rng(0).normal(loc=[10, 50, 90], scale=[1, 5, 9], size=(720, 3)),
                     nu=0.01, gamma=request.param)


def test_arrays_round_trip_exactly(fitted):
    fmt, data = encode(fitted)
    restored = decode(fmt, data, ModelPolicy())
    original = compile_model(fitted)
    assert fmt == "ocsvm-arrays" and restored.model is None
    for name in ("mean", "scale", "support", "coef", "intercept", "gamma"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(original, name))


def test_the_rebuilt_pipeline_is_scikit_learns_model(fitted):
    X = np.random.default_rng(1).normal(loc=[10, 50, 90], scale=[2, 10, 18], size=(500, 3))
    rebuilt = to_pipeline(decode_arrays(encode(fitted)[1]))
    np.testing.assert_array_equal(rebuilt.decision_function(X), fitted.decision_function(X))
    np.testing.assert_array_equal(rebuilt.predict(X), fitted.predict(X))


def _npy(vector: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vector)
    return buffer.getvalue()


@pytest.mark.parametrize("damage, reason", [
    (lambda v: v[:-1].tobytes(), "its header announces"),
    (lambda v: v.tobytes()[:-3], "whole float64 values"),
    (lambda v: np.r_[2.0, v[1:]].tobytes(), "not layout 1"),
    (lambda v: np.r_[v[:3], -1.0, v[4:]].tobytes(), "gamma <= 0"),
    (lambda v: np.r_[v[:-1], np.nan].tobytes(), "non-finite"),
    (lambda v: _npy(v), "not layout 1"),
], ids=["truncated", "partial-value", "layout", "gamma", "nan", "npy-file"])
def test_damaged_arrays_are_refused_with_the_reason(fitted, damage, reason):
    vector = np.frombuffer(encode_arrays(compile_model(fitted)), dtype="<f8")
    with pytest.raises(ValueError, match=reason):
        decode_arrays(damage(vector))


def test_other_estimators_are_stored_with_skops():
    forest = IsolationForest(n_estimators=3, random_state=0).fit(np.zeros((10, 2)))
    fmt, data = encode(forest)
    assert fmt == "skops"
    with pytest.raises(ValueError, match="Tree"):
        decode(fmt, data, ModelPolicy())
    assert type(decode(fmt, data, ModelPolicy(trusted=("sklearn.tree._tree.Tree",)))) is IsolationForest
    with pytest.raises(ValueError, match="unknown model format 'pickle'"):
        decode("pickle", data, ModelPolicy())
