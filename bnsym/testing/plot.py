"""A picture of a check's margins: for each property and input regime, the worst |observed error| / tolerance.

A kernel author sees at a glance which regime eats the error budget: a cell near 1 is close to failing, above 1
(red) has failed. Needs matplotlib (``pip install -e '.[plot]'``); imported only when a plot is asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnsym.testing.files import write_atomically
from bnsym.testing.results import FAILED, Report
from bnsym.testing.strategies import layer_regimes

__all__ = ["plot_margins"]


def plot_margins(report: Report, path) -> Path:
    """Draw the margins of ``report`` as a heat map (properties down, regimes across) into the PNG ``path``
    (written atomically); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    rows = [r for r in report.results if r.margins or r.status == FAILED]
    known = tuple(report.regimes) or layer_regimes(report.options.layer)  # a run's own (a sharded run has more)
    regimes = [g for g in known if any(g in r.margins for r in rows)] or list(report.regimes or known)
    values = np.full((len(rows), len(regimes)), np.nan)
    for i, r in enumerate(rows):
        for j, regime in enumerate(regimes):
            if regime in r.margins:
                values[i, j] = r.margins[regime]
    shown = np.clip(np.nan_to_num(values, nan=np.nan, posinf=1e6), 1e-4, 1e6)
    figure, axes = plt.subplots(figsize=(2.0 + 1.25 * len(regimes), 1.2 + 0.32 * max(len(rows), 1)))
    image = axes.imshow(shown, cmap="RdYlGn_r", norm=LogNorm(vmin=1e-3, vmax=1e3), aspect="auto")
    for i in range(len(rows)):
        for j in range(len(regimes)):
            value = values[i, j]
            if np.isnan(value):
                continue
            text = "inf" if np.isinf(value) else f"{value:.2g}"
            axes.text(j, i, text, ha="center", va="center", fontsize=7,
                      fontweight="bold" if value > 1 else "normal")
    axes.set_xticks(range(len(regimes)), regimes, rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(len(rows)), [f"{r.name}{'  FAIL' if r.status == FAILED else ''}" for r in rows],
                    fontsize=8)
    axes.set_title(f"bnsym check {report.implementation}, {report.dtype}: worst |error| / tolerance", fontsize=9)
    figure.colorbar(image, ax=axes, label="worst |error| / tolerance (above 1 fails)")
    figure.tight_layout()
    try:
        return write_atomically(path, lambda stream: figure.savefig(stream, format="png", dpi=110))
    finally:
        plt.close(figure)
