"""The picture of a 2-D toy run: the data, the model's samples and the density the model's ELBO defines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PANELS = ("data", "model samples", "exp(ELBO), normalised on the square")


def toy2d_figure(data: Tensor, samples: Tensor, log_density: Tensor, half_width: float) -> Figure:
    """A 1200 x 400 pixel figure of three square panels on [-w, w]^2, left to right: ``data (N, 2)`` as points,
    ``samples (M, 2)`` as points, and the density exp(``log_density``) with ``log_density[i, j]`` at the grid point
    (x_i, y_j) (``metrics.toy2d.elbo_log_density``). Points outside the square are clipped from view. Drawn with
    matplotlib's object API on an Agg canvas, so no global plotting state (pyplot, a display) is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    extent = (-half_width, half_width, -half_width, half_width)
    for ax, points in zip(axes[:2], (data, samples), strict=True):
        xy = points.detach().float().cpu().numpy()
        ax.scatter(xy[:, 0], xy[:, 1], s=1, alpha=0.5, linewidths=0)
    # imshow's rows are y (origin at the bottom), its columns x: the transpose of [i, j] = (x_i, y_j)
    axes[2].imshow(log_density.exp().T.float().cpu().numpy(), origin="lower", extent=extent, cmap="viridis")
    for ax, title in zip(axes, PANELS, strict=True):
        ax.set(xlim=extent[:2], ylim=extent[2:], aspect="equal", title=title)
    return fig


def figure_rgb(fig: Figure) -> np.ndarray:
    """The rendered figure as an ``(H, W, 3)`` uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(image: np.ndarray, path: Path) -> None:
    """Write an ``(H, W, 3)`` uint8 image as a PNG."""
    from matplotlib.image import imsave

    imsave(path, image)
