"""The anomaly picture: per-minute shares from the device-hour rows and the SVG built from them."""

import base64

import numpy as np
import pandas as pd

from flows import report
from flows.picture import heatmap_svg, markdown_image, minute_shares
from scoring import alerts, layout
from scoring.alerts import AlertRule
from scoring.align import Grid
from scoring.records import Failure, Features

HOUR = layout.parse_hour("2026-11-27T10")
GRID = Grid.over([HOUR], min_coverage=0.0)
RULE = AlertRule(anomalous_steps=1, within_steps=1)


def _scored(device: str, steps: np.ndarray, flagged: set[int], tag: str | None = None
            ) -> tuple[tuple[Features, np.ndarray, np.ndarray], pd.DataFrame]:
    """A scored model as the batch holds it, and its predictions (``ts, device, anomaly``)."""
    ts = GRID.times(steps)
    anomaly = np.isin(steps, list(flagged)).astype("int8")
    model = Features((device, tag), ts, np.zeros((len(steps), 1)), expected=GRID.size), np.zeros(len(steps)), anomaly
    return model, pd.DataFrame({"ts": ts, "device": device, "anomaly": anomaly})


def _from_predictions(predictions: pd.DataFrame, devices: list[str]) -> pd.DataFrame:
    """What the picture showed when it read the predictions back: the mean anomaly per device and minute."""
    minute = (predictions["ts"] - pd.Timestamp(HOUR).tz_localize(None)) // pd.Timedelta(minutes=1)
    table = predictions.assign(minute=minute).pivot_table(index="device", columns="minute", values="anomaly",
                                                          aggfunc="mean")
    return table.reindex(index=devices, columns=range(60))


def test_shares_equal_those_of_the_predictions_and_are_nan_where_nothing_was_scored():
    rng = np.random.default_rng(7)
    every = np.arange(GRID.size)
    models = [_scored("a", every, {60, 62, 300}),                                 # minutes 5 and 25
              _scored("b", every[:360], set()),                                   # silent after minute 30
              _scored("c", np.sort(rng.choice(every, 500, replace=False)),        # gaps: 7, 9, 10 ... of 12
                      set(rng.choice(every, 80).tolist()), tag="t1"),
              _scored("c", every[::2], set(every[::7].tolist()), tag="t2")]      # a second sensor adds up
    rows = alerts.device_hours([alerts.unscored(Failure("d", "bad"), GRID)],
                               alerts.scored_hours([model for model, _ in models], GRID, RULE))
    shares = minute_shares(rows, ["b", "a", "c", "d"])
    expected = _from_predictions(pd.concat([p for _, p in models]), ["b", "a", "c", "d"])
    assert list(shares.index) == ["b", "a", "c", "d"] and list(shares.columns) == list(range(60))
    assert shares.loc["a", [5, 25]].tolist() == [2 / 12, 1 / 12] and shares.loc["a"].drop([5, 25]).eq(0).all()
    assert shares.loc["b", :29].eq(0).all() and shares.loc["b", 30:].isna().all() and shares.loc["d"].isna().all()
    np.testing.assert_array_equal(shares.to_numpy(), expected.to_numpy())  # the same floats, bit for bit


def test_the_map_draws_the_devices_in_alert_from_the_committed_rows_too():
    rows = alerts.scored_hours([_scored("a", np.arange(GRID.size), {5})[0],
                                _scored("quiet", np.arange(GRID.size), set())[0]], GRID, RULE)
    committed = rows.astype({"minutes": object})  # as read back from the Delta table: bytes objects
    pictures = [report.anomaly_map(HOUR, frame) for frame in (rows, committed)]
    assert pictures[0] == pictures[1] and "1 devices in alert" in base64.b64decode(
        pictures[0].split("base64,", 1)[1].split(")", 1)[0]).decode()
    assert report.anomaly_map(HOUR, rows[rows["device"] == "quiet"]) is None


def test_svg_draws_a_cell_per_reported_minute_and_escapes_labels():
    shares = pd.DataFrame(np.full((2, 60), np.nan), index=["a<b", "quiet"])
    shares.loc["a<b"], shares.loc["quiet", :9] = 0.0, 0.0
    shares.loc["a<b", 5] = 0.5
    svg = heatmap_svg(shares, "title & more")
    assert svg.count("<rect") == 1 + 60 + 10  # background, device a<b, quiet's ten minutes
    assert svg.count("rgba(214,39,40,") == 1
    assert ">a&lt;b</text>" in svg and "title &amp; more" in svg


def test_markdown_embeds_the_svg_as_a_data_uri():
    text = markdown_image("<svg/>", "caption")
    assert text.startswith("![caption](data:image/svg+xml;base64,")
    assert base64.b64decode(text.split(",", 1)[1].rstrip(")")) == b"<svg/>"
