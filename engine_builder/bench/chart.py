"""``cpu.png``: one 96^3 window per model and engine; the whole volume as a user runs it, per engine.

Drawn from the saved JSON figures (as the markdown is). Left: window latency, log scale, median with min–max.
Right: the fresh-process command's wall clock split into its stages and its start-up (wall clock minus stages),
and beside each engine the warm per-scan time (engine already loaded).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from .common import LABELS, OV_BF16, OV_FP32, OV_INT8, STAGES, TORCH_FP32

COLORS = {TORCH_FP32: "#7f7f7f", OV_FP32: "#1f77b4", OV_BF16: "#9467bd", OV_INT8: "#2ca02c"}


def render_chart(figures: dict, path: Path) -> None:
    """Write the chart as PNG at ``path`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ([_windows] if figures["window"] else []) + [_volume_panel(v) for v in figures["volume"].values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        panel(ax, figures)
    fig.suptitle(f"{figures['machine']['cpu']}, {figures['machine']['threads']} threads, OpenVINO "
                 f"{figures['versions']['openvino']}, torch {figures['versions']['torch']}, load average at start "
                 f"{figures['machine']['load_average']['start']}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=110, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _windows(ax, figures: dict) -> None:
    windows = figures["window"]
    keys = [k for k in LABELS if any(k in w["latency_ms"] for w in windows.values())]
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        names = [n for n, w in windows.items() if key in w["latency_ms"]]
        xs = [list(windows).index(n) + (i - (len(keys) - 1) / 2) * width for n in names]
        med = np.array([windows[n]["latency_ms"][key]["median"] for n in names])
        low = med - [windows[n]["latency_ms"][key]["min"] for n in names]
        high = np.array([windows[n]["latency_ms"][key]["max"] for n in names]) - med
        bars = ax.bar(xs, med, width, yerr=[low, high], capsize=2, label=LABELS[key], color=COLORS[key])
        for bar, value in zip(bars, med):
            ax.text(bar.get_x() + bar.get_width() / 2, value * 1.05, f"{value:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(windows)), [n + ("" if w["trained"] else "\n(random weights)") for n, w in windows.items()])
    ax.set_ylabel("ms per 96³ window (median, min–max), log scale")
    ax.set_title("One window")
    ax.legend(fontsize=8)


def _volume_panel(volume: dict):
    """A panel drawing one model's whole-volume figures."""
    import matplotlib.pyplot as plt

    def draw(ax, figures: dict) -> None:
        engines, warm = volume["fresh"]["engines"], volume["warm"]["engines"]
        keys = list(engines)
        x = np.arange(len(keys))
        bottom = np.zeros(len(keys))
        colors = plt.get_cmap("tab10").colors
        for s, stage in enumerate(STAGES):
            values = np.array([engines[k]["stages_ms"][stage]["median"] / 1e3 for k in keys])
            ax.bar(x - 0.2, values, 0.38, bottom=bottom, color=colors[s], label=stage)
            bottom += values
        startup = np.array([engines[k]["wall_ms"]["median"] / 1e3 for k in keys]) - bottom
        ax.bar(x - 0.2, startup, 0.38, bottom=bottom, color="#dddddd", hatch="//", label="start-up (wall − stages)")
        warm_s = np.array([warm[k]["wall_ms"]["median"] / 1e3 for k in keys])
        ax.bar(x + 0.2, warm_s, 0.38, color=[COLORS[k] for k in keys], alpha=0.6, label="warm: engine loaded once")
        for j, key in enumerate(keys):
            ax.text(x[j] - 0.2, bottom[j] + startup[j], f"{engines[key]['wall_ms']['median'] / 1e3:.1f} s",
                    ha="center", va="bottom", fontsize=8)
            ax.text(x[j] + 0.2, warm_s[j], f"{warm_s[j]:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [LABELS[k].replace(" eager", "") for k in keys], fontsize=8)
        ax.set_ylabel("seconds (medians)")
        ax.set_title(f"`ptqseg segment`, fresh process (left bar) and warm (right): {volume['model']}, "
                     f"{volume['windows']} windows", fontsize=9)
        ax.legend(fontsize=7)

    return draw
