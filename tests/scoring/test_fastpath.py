"""The NumPy fast path gives scikit-learn's scores and flags, and leaves other models to themselves."""

import dataclasses

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from scoring.fastpath import compile_model
from scoring.generate import device_ids, generate_hour
from scoring.predict import fit_model, predict

TOLERANCE = 1e-9


def _hour(hour: str, anomaly_rate: float = 0.0) -> np.ndarray:
    """Three devices' hour as a (device, 720, 5) array, as features would give it."""
    frame, _ = generate_hour(device_ids(3), hour, seed=7, anomaly_rate=anomaly_rate)
    return frame["value"].to_numpy().reshape(3, 720, 5)


@pytest.fixture(scope="module", params=[0.02, "scale"], ids=["gamma-float", "gamma-scale"])
def fitted(request):
    """A standard model per generated device, and an hour with injected anomalies to score."""
    train = _hour("2026-11-27T08")
    models = [fit_model(X, nu=0.001, gamma=request.param) for X in train]
    return models, _hour("2026-11-27T10", anomaly_rate=1.0)


def _assert_same(model, X):
    got_score, got_anomaly = predict(model, X)
    np.testing.assert_allclose(got_score, model.decision_function(X), rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(got_anomaly, model.predict(X) == -1)


def test_generated_hours_score_as_scikit_learn(fitted):
    models, hour = fitted
    for model, X in zip(models, hour):
        assert compile_model(model) is not None
        _assert_same(model, X)
        assert 0 < (model.predict(X) == -1).sum() < 100  # both sides of the boundary are covered


def test_single_rows_and_huge_values_score_as_scikit_learn(fitted):
    models, hour = fitted
    model = models[0]
    _assert_same(model, hour[0][:1])
    huge = np.array([[1e6] * 5, [-1e30] * 5, [1e200, 12, 35, 62, 105], [1.7e308] * 5, [-1.7e308] * 5])
    _assert_same(model, huge)
    assert (predict(model, huge)[1] == 1).all()


def _boundary_pair(model, inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Two rows next to each other across the model's boundary, found by bisection."""
    lo, hi = 0.0, 1.0  # score(inside + t * (outside - inside)) > 0 at lo, <= 0 at hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if model.decision_function([inside + mid * (outside - inside)])[0] > 0:
            lo = mid
        else:
            hi = mid
    return np.array([inside + lo * (outside - inside), inside + hi * (outside - inside)])


def test_points_on_the_boundary_get_scikit_learns_sign(fitted):
    models, hour = fitted
    model, X = models[0], hour[0]
    flags = model.predict(X) == -1
    rows = _boundary_pair(model, X[~flags][0], X[flags][0])
    assert np.abs(model.decision_function(rows)).max() < 1e-6
    assert (model.predict(rows) == -1).tolist() == [False, True]
    _assert_same(model, rows)


@pytest.mark.parametrize("keep_fitted", [True, False], ids=["fitted-model", "rebuilt-from-arrays"])
def test_rows_within_the_margin_are_rescored_by_scikit_learn(fitted, keep_fitted):
    models, hour = fitted
    model, X = models[0], hour[0][:50]
    compiled = compile_model(model)
    everything_near = compiled if keep_fitted else dataclasses.replace(compiled, model=None)
    object.__setattr__(everything_near, "margin", np.inf)
    got_score, got_anomaly = predict(everything_near, X)
    np.testing.assert_array_equal(got_score, model.decision_function(X))
    np.testing.assert_array_equal(got_anomaly, model.predict(X) == -1)


class NoScikitLearn:
    def decision_function(self, X):
        raise AssertionError("scikit-learn was called for an ordinary row")


def test_ordinary_rows_never_call_scikit_learn(fitted):
    models, hour = fitted
    detached = dataclasses.replace(compile_model(models[0]), model=None)
    detached.__dict__["reference"] = NoScikitLearn()
    got_score, _ = predict(detached, hour[0])
    np.testing.assert_allclose(got_score, models[0].decision_function(hour[0]), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("gamma", [0.5, "scale"])
def test_per_sensor_one_feature_models(gamma):
    rng = np.random.default_rng(3)
    model = fit_model(rng.uniform(30, 40, size=(1440, 1)), nu=0.01, gamma=gamma)
    X = np.r_[rng.uniform(25, 45, size=(720, 1)), [[35.0], [1e9]]]
    _assert_same(model, X)


OTHER_MODELS = {
    "isolation-forest": IsolationForest(n_estimators=20, random_state=0),
    "bare-ocsvm": OneClassSVM(gamma=0.1, nu=0.05),
    "linear-kernel": make_pipeline(StandardScaler(), OneClassSVM(kernel="linear", nu=0.05)),
    "scaler-without-mean": make_pipeline(StandardScaler(with_mean=False), OneClassSVM(nu=0.05)),
}


@pytest.mark.parametrize("name", OTHER_MODELS)
def test_other_models_fall_back_to_their_own_methods(name):
    rng = np.random.default_rng(5)
    model = OTHER_MODELS[name].fit(rng.normal(size=(300, 3)))
    X = rng.normal(scale=2, size=(100, 3))
    assert compile_model(model) is None
    got_score, got_anomaly = predict(model, X)
    np.testing.assert_array_equal(got_score, model.decision_function(X))
    np.testing.assert_array_equal(got_anomaly, (model.predict(X) == -1).astype("int8"))


def test_predict_takes_a_compiled_model_and_checks_its_features(fitted):
    models, hour = fitted
    compiled = compile_model(models[0])
    got_score, got_anomaly = predict(compiled, hour[0])
    assert got_anomaly.dtype == np.int8
    np.testing.assert_allclose(got_score, models[0].decision_function(hour[0]), rtol=0, atol=TOLERANCE)
    with pytest.raises(ValueError, match="model expects 5 features, telemetry gives 4"):
        predict(compiled, hour[0][:, :4])


def test_non_finite_input_is_refused_like_scikit_learn(fitted):
    models, hour = fitted
    X = hour[0][:3].copy()
    X[1, 2] = np.nan
    with pytest.raises(ValueError):
        models[0].decision_function(X)
    with pytest.raises(ValueError, match="NaN or infinite"):
        predict(models[0], X)
