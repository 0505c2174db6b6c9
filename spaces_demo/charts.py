"""The demo's bar chart of per-finding probabilities (matplotlib, no pyplot state)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from results import Predictions


def render_chart(predictions: Sequence[Predictions], findings: Sequence[str], unreliable: bool = False,
                 title: str | None = None):  # fmt: skip
    """A horizontal bar chart (matplotlib ``Figure``, no pyplot state) of one or more prediction sources.

    Bars at or above their finding's operating threshold are drawn dark; thresholds are black ticks (0.5, dashed,
    where the calibration provides none). ``unreliable`` greys and hatches every bar and says so in the title.
    """
    # matplotlib is imported on the first chart, not with the module: demo_engine re-exports this function, and the
    # engine alone (tests, the API without charts) should not pay for matplotlib's import.
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = len(findings)
    k = len(predictions)
    fig = Figure(figsize=(7.6, 0.34 * n * max(1, 0.6 * k) + 1.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / k
    palette = [("#c0392b", "#e6a39b"), ("#2471a3", "#9cc3e0"), ("#7d3c98", "#cdb0db")]
    y = np.arange(n)
    legend = []
    for j, pred in enumerate(predictions):
        offset = (j - (k - 1) / 2) * height
        thresholds = pred.thresholds if pred.thresholds is not None else np.full(n, 0.5)
        positive = pred.probabilities >= np.nan_to_num(thresholds, nan=np.inf)
        dark, light = palette[j % len(palette)]
        colours = ["#9e9e9e" if unreliable else (dark if p else light) for p in positive]
        ax.barh(y + offset, pred.probabilities, height=height * 0.92, color=colours,
                hatch="//" if unreliable else None, edgecolor="white", linewidth=0.4)  # fmt: skip
        state = "calibrated" if pred.calibrated else "uncalibrated"
        legend.append(Patch(facecolor="#9e9e9e" if unreliable else dark, hatch="//" if unreliable else None,
                            label=f"{pred.source} ({state})"))
        for i, t in enumerate(thresholds):
            if np.isfinite(t):
                ax.plot([t, t], [i + offset - height / 2, i + offset + height / 2], color="black", lw=1.6,
                        ls="-" if pred.thresholds is not None else (0, (2, 1.5)))  # fmt: skip
        for i, p in enumerate(pred.probabilities):
            ax.text(min(p + 0.01, 0.9), i + offset, f"{p:.2f}", va="center", fontsize=7, color="#333333")
    ax.set_yticks(y, list(findings), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability; black tick: operating threshold (dashed: 0.5, no calibrated threshold);\n"
                  "dark bar: at or above it", fontsize=8)
    calibrated = all(p.calibrated for p in predictions)
    default = "Calibrated probabilities" if calibrated else (
        "Zero-shot probabilities (uncalibrated)" if not any(p.calibrated for p in predictions)
        else "Probabilities (calibration per source in the legend)")  # fmt: skip
    heading = title or default
    if unreliable:
        heading = "NOT RELIABLE (input checks failed): " + heading
    ax.set_title(heading, fontsize=10, color="#b03a2e" if unreliable else "black")
    ax.grid(axis="x", alpha=0.3)
    # The legend (one line per source) goes under the axes, in space reserved for it by tight_layout's rect.
    fig.legend(handles=legend, loc="lower center", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, (0.2 + 0.16 * k) / fig.get_figheight(), 1, 1))
    return fig
