"""Draw Resources/Icons/PTQSegment.png (128 x 128): a CT-like slice whose grey levels are visibly quantized
(the INT8 idea), with a coloured organ segment on it and the word INT8. Run: python make_icon.py"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

SIZE = 128


def slice_image(n: int = 32) -> np.ndarray:
    """A torso-like slice on an n x n grid, quantized to 6 grey levels, with transparency outside the body."""
    y, x = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    body = (x / 0.92) ** 2 + (y / 0.72) ** 2 < 1
    grey = 0.35 + 0.25 * np.exp(-((x + 0.3) ** 2 + (y + 0.05) ** 2) / 0.12) + 0.15 * np.cos(3 * x) * np.sin(2 * y)
    spine = (x ** 2 + (y - 0.45) ** 2) < 0.025
    grey = np.where(spine, 0.95, grey)
    levels = np.floor(np.clip(grey, 0, 0.999) * 6) / 5
    rgba = np.zeros((n, n, 4))
    rgba[..., :3] = levels[..., None]
    rgba[..., 3] = body
    return rgba


def main() -> None:
    fig = plt.figure(figsize=(1, 1), dpi=SIZE)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.add_patch(FancyBboxPatch((0.03, 0.03), 0.94, 0.94, boxstyle="round,pad=0,rounding_size=0.16",
                                facecolor="#1d2b3a", edgecolor="#4fa3e0", linewidth=1.5))
    ax.imshow(slice_image(), extent=(0.1, 0.9, 0.3, 0.9), interpolation="nearest", zorder=2)
    theta = np.linspace(0, 2 * np.pi, 100)
    ax.fill(0.36 + 0.12 * np.cos(theta) * (1 + 0.15 * np.sin(3 * theta)), 0.62 + 0.1 * np.sin(theta),
            color=(221 / 255, 130 / 255, 101 / 255, 0.85), zorder=3)  # the demo model's liver colour
    ax.text(0.5, 0.15, "INT8", ha="center", va="center", fontsize=15, fontweight="bold", color="#7fd4ff",
            family="DejaVu Sans", zorder=4)
    fig.savefig(Path(__file__).with_name("PTQSegment.png"), dpi=SIZE, transparent=True)


if __name__ == "__main__":
    main()
