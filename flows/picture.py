"""A picture of an hour's anomalies: devices by minute, as an SVG heat map embedded in markdown.

Drawn from the device-hour rows' per-minute counts (``scoring.alerts``), which
the workers compute: the flow never reads a prediction back to draw it.

SVG written by hand rather than a matplotlib PNG: no plotting library (and its
fonts and native wheels) in the image that runs flows and Dask workers, the
picture stays a few kilobytes, and it scales sharply in the UI.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

import numpy as np
import pandas as pd

from scoring.alerts import minute_counts

MINUTES = 60
CELL_W, CELL_H = 10, 14
LABEL_W, TOP, BOTTOM = 120, 24, 22


def minute_shares(device_hours: pd.DataFrame, devices: Sequence[str]) -> pd.DataFrame:
    """Share of anomalous rows per device (rows, in ``devices`` order) and minute of the hour (columns).

    A device's models (one per sensor, or one) add up: flagged steps over scored
    steps. Minutes without a scored row are NaN, so a silent device is told apart
    from a normal one.
    """
    order = {device: i for i, device in enumerate(devices)}
    scored, flagged = np.zeros((2, len(devices), MINUTES))
    rows = device_hours[device_hours["device"].isin(list(order)) & device_hours["minutes"].notna()]
    for device, record in zip(rows["device"], rows["minutes"]):
        counts = minute_counts(record)
        scored[order[device]] += counts[0]
        flagged[order[device]] += counts[1]
    shares = np.divide(flagged, scored, out=np.full_like(flagged, np.nan), where=scored > 0)
    return pd.DataFrame(shares, index=list(devices), columns=range(MINUTES))


def _cell(row: int, minute: int, share: float) -> str:
    colour = "#eceff3" if share == 0 else f"rgba(214,39,40,{0.15 + 0.85 * share:.2f})"
    return (f'<rect x="{LABEL_W + minute * CELL_W}" y="{TOP + row * CELL_H}" width="{CELL_W - 1}" '
            f'height="{CELL_H - 1}" fill="{colour}"/>')


def heatmap_svg(shares: pd.DataFrame, title: str) -> str:
    """An SVG with one row per device and one cell per minute, red where the model flagged rows."""
    width, height = LABEL_W + MINUTES * CELL_W + 10, TOP + len(shares) * CELL_H + BOTTOM
    text = 'font-family="sans-serif" font-size="11"'
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="4" y="15" {text} font-weight="bold">{escape(title)}</text>']
    for row, (device, values) in enumerate(shares.iterrows()):
        parts.append(f'<text x="{LABEL_W - 6}" y="{TOP + row * CELL_H + 11}" {text} '
                     f'text-anchor="end">{escape(str(device)[:18])}</text>')
        parts += [_cell(row, m, float(v)) for m, v in enumerate(values) if pd.notna(v)]
    for minute in range(0, MINUTES + 1, 15):
        parts.append(f'<text x="{LABEL_W + minute * CELL_W}" y="{height - 6}" {text} '
                     f'text-anchor="middle">:{minute:02d}</text>')
    return "".join(parts) + "</svg>"


def markdown_image(svg: str, caption: str) -> str:
    """Markdown showing ``svg`` inline (a data URI): the artifact needs no file server."""
    data = base64.b64encode(svg.encode()).decode()
    return f"![{caption}](data:image/svg+xml;base64,{data})"
