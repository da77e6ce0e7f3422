"""The anomaly picture: per-minute shares and the SVG built from them."""

import base64
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from flows.picture import heatmap_svg, markdown_image, minute_shares

HOUR = datetime(2026, 11, 27, 10, tzinfo=timezone.utc)


def _rows(device: str, minutes: range, flagged: set[int]) -> pd.DataFrame:
    ts = pd.DatetimeIndex([pd.Timestamp(HOUR) + pd.Timedelta(minutes=m, seconds=s)
                           for m in minutes for s in (0, 30)])
    anomaly = [int(m in flagged and s == 0) for m in minutes for s in (0, 30)]
    return pd.DataFrame({"ts": ts, "device": device, "anomaly": anomaly})


def test_shares_are_per_minute_in_the_given_order_and_nan_where_silent():
    frame = pd.concat([_rows("a", range(60), {5}), _rows("b", range(30), set()), _rows("c", range(60), {1})])
    shares = minute_shares(frame, HOUR, ["b", "a"])
    assert list(shares.index) == ["b", "a"] and list(shares.columns) == list(range(60))
    assert shares.loc["a", 5] == 0.5 and shares.loc["a"].drop(5).eq(0).all()
    assert shares.loc["b", :29].eq(0).all() and np.isnan(shares.loc["b", 30:]).all()


def test_svg_draws_a_cell_per_reported_minute_and_escapes_labels():
    frame = pd.concat([_rows("a<b", range(60), {5}), _rows("quiet", range(10), set())])
    svg = heatmap_svg(minute_shares(frame, HOUR, ["a<b", "quiet"]), "title & more")
    assert svg.count("<rect") == 1 + 60 + 10  # background, device a<b, quiet's ten minutes
    assert svg.count("rgba(214,39,40,") == 1
    assert ">a&lt;b</text>" in svg and "title &amp; more" in svg


def test_markdown_embeds_the_svg_as_a_data_uri():
    text = markdown_image("<svg/>", "caption")
    assert text.startswith("![caption](data:image/svg+xml;base64,")
    assert base64.b64decode(text.split(",", 1)[1].rstrip(")")) == b"<svg/>"
