"""Sample and reconstruction grids: PNG files in the run directory, and images in loggers that take them."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from vae_experiments.callbacks.toy2d_figure import figure_rgb, save_png, toy2d_figure
from vae_experiments.metrics.toy2d import elbo_log_density


class ImageGrids(L.Callback):
    """After each validation epoch (and after testing) write ``samples.png``, ``samples_drawn.png`` and
    ``reconstructions.png``.

    Samples are z ~ p(z) decoded to the likelihood's mean (an autoregressive decoder draws pixel by pixel);
    ``samples_drawn.png`` holds draws x ~ p(x|z) for the same z (non-autoregressive decoders: what the observation
    model adds to its mean, e.g. SOS-VAE's spatially coherent noise); reconstructions put the first ``n`` validation
    images above their reconstructions from E_q[z]. 2-D points (the toys) get one picture instead, ``samples.png``:
    up to ``points`` validation points, as many model samples (z ~ p(z), the decoder's mean, as ``test/toy2d_*``
    use) and the density exp(ELBO) normalised over a ``toy_grid``^2 grid on [-w, w]^2, ``w = half_width``
    (``metrics.toy2d``). Rank zero only.
    """

    def __init__(
        self,
        output_dir: str,
        n: int = 64,
        every_n_epochs: int = 1,
        sample_mean: bool = True,
        half_width: float = 2.0,
        points: int = 2000,
        toy_grid: int = 200,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.n = n
        self.every_n_epochs = every_n_epochs
        self.sample_mean = sample_mean
        self.half_width = half_width
        self.points = points
        self.toy_grid = toy_grid

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.draw(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.draw(trainer, pl_module)

    @rank_zero_only
    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        if tuple(model.data_shape) == (2,):
            self.draw_points(trainer, pl_module)
            return
        if len(model.data_shape) != 3:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            drawn = None
            if model.autoregressive:
                samples = model.sample(self.n, mean=self.sample_mean).float().clamp(0, 1)
            else:
                px = model.decode(model.prior.sample(self.n))
                samples = (px.mean if self.sample_mean else px.sample()).float().clamp(0, 1)
                drawn = px.sample().float().clamp(0, 1)
            x = self._first_batch(trainer, pl_module)
            recon = model.reconstruct(x).float().clamp(0, 1) if x is not None else None
        model.train(was_training)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        nrow = max(1, int(self.n**0.5))
        grids = {"samples": make_grid(samples.cpu(), nrow=nrow)}
        save_image(grids["samples"], self.output_dir / "samples.png")
        if drawn is not None:
            grids["samples_drawn"] = make_grid(drawn.cpu(), nrow=nrow)
            save_image(grids["samples_drawn"], self.output_dir / "samples_drawn.png")
        if recon is not None:
            pairs = torch.stack([x.float(), recon], 1).flatten(0, 1).cpu()  # original above its reconstruction
            grids["reconstructions"] = make_grid(pairs, nrow=2 * max(1, int((x.shape[0] / 2) ** 0.5)))
            save_image(grids["reconstructions"], self.output_dir / "reconstructions.png")
        self.log_images(trainer, grids)

    def draw_points(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``samples.png`` of a 2-D run: data, model samples and the ELBO's density (``toy2d_figure``)."""
        model = pl_module.model
        data = self._first_batch(trainer, pl_module, self.points)
        if data is None:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            samples = model.sample(data.shape[0], mean=True)
            log_density, _ = elbo_log_density(model, self.half_width, self.toy_grid, device=pl_module.device)
        model.train(was_training)
        image = figure_rgb(toy2d_figure(data, samples, log_density, self.half_width))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_png(image, self.output_dir / "samples.png")
        self.log_images(trainer, {"samples": torch.from_numpy(image).permute(2, 0, 1)})

    def log_images(self, trainer: L.Trainer, grids: dict[str, torch.Tensor]) -> None:
        """``grids`` (C, H, W) to every logger that takes images, as ``images/<name>`` at the current step."""
        for logger in trainer.loggers:
            for name, grid in grids.items():
                if hasattr(logger, "log_image"):  # wandb
                    logger.log_image(key=f"images/{name}", images=[grid], step=trainer.global_step)
                elif hasattr(getattr(logger, "experiment", None), "add_image"):  # tensorboard
                    logger.experiment.add_image(f"images/{name}", grid, trainer.global_step)

    def _first_batch(
        self, trainer: L.Trainer, pl_module: L.LightningModule, n: int | None = None
    ) -> torch.Tensor | None:
        """The first ``n`` (default ``self.n // 2``) validation (else test) examples, from as many batches as that
        takes (fewer when the set is smaller)."""
        loaders = trainer.val_dataloaders or trainer.test_dataloaders
        if loaders is None:
            return None
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        n = n or max(1, self.n // 2)
        batches, count = [], 0
        for batch in loader:
            batches.append(batch[: n - count])
            count += batches[-1].shape[0]
            if count == n:
                break
        return torch.cat(batches).to(pl_module.device) if batches else None
