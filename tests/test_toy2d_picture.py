"""The picture of a 2-D toy run: data, model samples and the ELBO's density on the metric square."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vae_experiments.callbacks.images import ImageGrids
from vae_experiments.callbacks.toy2d_figure import PANELS, figure_rgb, toy2d_figure
from vae_experiments.metrics.toy2d import elbo_log_density, grid_axis
from vae_experiments.train import train


class QuadraticELBO:
    """A stand-in model whose ELBO is -(x - 1)^2 - 4 y^2: the density peaks at (1, 0), narrower along y."""

    def terms(self, x: torch.Tensor, samples: int) -> SimpleNamespace:
        return SimpleNamespace(elbo=-((x[:, 0] - 1) ** 2) - 4 * x[:, 1] ** 2)


def test_elbo_log_density_is_the_normalised_elbo_on_the_grid() -> None:
    w, n = 2.0, 40
    log_density, log_z = elbo_log_density(QuadraticELBO(), w, n, batch_size=97)  # chunks that do not divide n^2
    axis = grid_axis(w, n).double()
    x, y = torch.meshgrid(axis, axis, indexing="ij")  # [i, j] = (axis[i], axis[j])
    elbo = -((x - 1) ** 2) - 4 * y**2
    cell = (2 * w / n) ** 2
    assert torch.allclose(log_z, torch.logsumexp(elbo.flatten(), 0) + math.log(cell), rtol=0, atol=1e-6)
    assert torch.allclose(log_density, elbo - log_z, rtol=0, atol=1e-5)  # the grid is float32
    assert float(log_density.exp().sum() * cell) == pytest.approx(1.0, abs=1e-9)
    assert axis[0] == pytest.approx(-w + w / n) and axis[-1] == pytest.approx(w - w / n)


def test_the_figure_has_three_square_panels_on_the_metric_square() -> None:
    data = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    log_density, _ = elbo_log_density(QuadraticELBO(), 3.0, 16)
    fig = toy2d_figure(data, data + 0.5, log_density, 3.0)
    assert [ax.get_title() for ax in fig.axes] == list(PANELS)
    assert all(ax.get_xlim() == ax.get_ylim() == (-3.0, 3.0) for ax in fig.axes)
    assert figure_rgb(fig).shape == (400, 1200, 3)
    image = fig.axes[2].get_images()[0]
    assert image.get_extent() == [-3.0, 3.0, -3.0, 3.0]
    # imshow's rows are y: the brightest cell sits at x = 1 (column), y = 0 (row), as the density does
    row, col = divmod(int(image.get_array().argmax()), 16)
    axis = grid_axis(3.0, 16)
    assert abs(axis[col] - 1) <= 3.0 / 16 and abs(axis[row]) <= 3.0 / 16


def test_a_toy2d_run_writes_its_picture(make_cfg, tmp_path: Path) -> None:
    train(
        make_cfg(
            "dataset=toy2d",
            "likelihood=gaussian",
            "dataset.n_train=600",
            "dataset.val_size=100",
            "dataset.n_test=100",
            "eval.toy2d.n_samples=200",
            "eval.toy2d.grid_points=16",
            "callbacks.image_grids.toy_grid=20",
            "callbacks.image_grids.every_n_epochs=1",
        )
    )
    with Image.open(tmp_path / "samples.png") as picture:
        assert picture.size == (1200, 400)
    assert not (tmp_path / "reconstructions.png").exists()


@pytest.mark.parametrize("n", [1, 7, 8, 19, 100])
def test_the_pictures_take_their_examples_from_as_many_batches_as_needed(n: int, tmp_path: Path) -> None:
    examples = torch.arange(40.0).reshape(20, 2)
    loader = list(examples.split(8))  # batches of 8, 8, 4
    trainer = SimpleNamespace(val_dataloaders=[loader], test_dataloaders=None)
    grids = ImageGrids(str(tmp_path), n=64)
    assert torch.equal(grids._first_batch(trainer, SimpleNamespace(device="cpu"), n), examples[:n])
