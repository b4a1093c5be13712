"""PixelCNN++'s discretised logistic mixture (Salimans et al. 2017) over 8-bit images, as in VLAE on CIFAR-10.

Data x in [0, 1] on the grid k / (L - 1), k = 0..L-1 (L = ``levels``), handled internally as y = 2x - 1 in
[-1, 1] with bin half-width h = 1 / (L - 1), the units PixelCNN++'s parameters are read in. For one channel,
component k with location mu and scale s (docs/vae.md#likelihoods):

    P(y) = F((y + h - mu) / s) - F((y - h - mu) / s),   F the logistic CDF (sigmoid),

with the edge bins open: P(-1) = F((-1 + h - mu) / s), P(1) = 1 - F((1 - h - mu) / s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, constraints

from vae_experiments.distributions.dtypes import at_least_float32
from vae_experiments.errors import ConfigError


def log1mexp(w: Tensor) -> Tensor:
    """log(1 - e^{-w}) for w > 0, accurate at both ends (Maechler's switch at log 2)."""
    return torch.where(w < math.log(2), torch.log(-torch.expm1(-w)), torch.log1p(-torch.exp(-w)))


def logistic_bin_log_prob(y: Tensor, loc: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """log P(y) of the discretised logistic above, exact in floating point at any distance from ``loc``.

    With a = (y + h - mu) / s and b = (y - h - mu) / s, the middle bins use the identity
        sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - e^{-(a - b)}),   a - b = 2h / s,
    so log P = log sigmoid(a) + log sigmoid(-b) + log(1 - e^{-2h/s}): a sum of log-sigmoids, none of which
    underflows or cancels. PixelCNN++ instead subtracts the two sigmoids and, where that difference underflows
    (< 1e-5), falls back to the mid-point density times the bin width; the identity makes that fallback
    unnecessary and is exact where the mid-point rule is not (in the far tail it is off by log(sinh(h/s) s/h)
    nats).
    """
    half = 1.0 / (levels - 1)
    inv_scale = torch.exp(-log_scale)
    centred = y - loc
    a = inv_scale * (centred + half)
    b = inv_scale * (centred - half)
    log_left = F.logsigmoid(a)  # bin 0: (-inf, -1 + h]
    log_right = F.logsigmoid(-b)  # bin L-1: [1 - h, inf)
    log_mid = log_left + log_right + log1mexp(2 * half * inv_scale)
    return torch.where(y < -1 + half, log_left, torch.where(y > 1 - half, log_right, log_mid))


def clamped_logistic_mean(loc: Tensor, log_scale: Tensor) -> Tensor:
    """E[clamp(Y, -1, 1)] for Y ~ Logistic(mu, s): -1 + s [softplus((mu + 1)/s) - softplus((mu - 1)/s)]."""
    s = log_scale.exp()
    return -1 + s * (F.softplus((loc + 1) / s) - F.softplus((loc - 1) / s))


class DiscretizedLogisticMixture(Distribution):
    """p(x) = prod_pixels sum_k pi_k prod_c P(x_c | k, x_<c), a mass over ``levels``^(C H W) images.

    ``logits`` (B, K, H, W); ``locs``, ``log_scales`` (B, K, C, H, W) in [-1, 1] units; ``coeffs``
    (B, K, 3, H, W) (already tanh'd) for RGB, None for grey. The RGB channels are autoregressive within a
    pixel (PixelCNN++):
        mu_G = mu_G + c_0 y_R,   mu_B = mu_B + c_1 y_R + c_2 y_G,
    with y the observed (or, when sampling, the already sampled) values in [-1, 1].
    Values passed to ``log_prob`` are read as the nearest level.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    support = constraints.unit_interval

    def __init__(self, logits: Tensor, locs: Tensor, log_scales: Tensor, coeffs: Tensor | None, levels: int) -> None:
        self.logits = logits
        self.locs = locs
        self.log_scales = log_scales
        self.coeffs = coeffs
        self.levels = levels
        super().__init__(locs.shape[:1], locs.shape[2:], validate_args=False)

    def locations(self, x: Tensor) -> Tensor:
        """Per-component logistic locations (..., B, K, C, H, W) in [-1, 1] units, given the image ``x``."""
        y = (2 * x - 1).unsqueeze(-4)
        if self.coeffs is None:
            return self.locs.expand(*x.shape[:-4], *self.locs.shape)
        c, y_red, y_green = self.coeffs, y[..., 0, :, :], y[..., 1, :, :]
        green = self.locs[:, :, 1] + c[:, :, 0] * y_red
        blue = self.locs[:, :, 2] + c[:, :, 1] * y_red + c[:, :, 2] * y_green
        return torch.stack([self.locs[:, :, 0].expand_as(green), green, blue], dim=-3)

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(x) = sum_pixels logsumexp_k [ log pi_k + sum_c log P(x_c | k, x_<c) ]; (..., B) nats."""
        x = torch.round(value * (self.levels - 1)) / (self.levels - 1)
        y = (2 * x - 1).unsqueeze(-4)
        per_channel = logistic_bin_log_prob(y, self.locations(x), self.log_scales, self.levels)
        log_mix = torch.log_softmax(self.logits, dim=1) + per_channel.sum(-3)
        return torch.logsumexp(log_mix, dim=-3).flatten(-2).sum(-1)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """Exact draws (..., B, C, H, W) on the level grid: one component per pixel (shared by its
        channels), then each channel by inverse CDF, clamped to [-1, 1] and rounded to the nearest level,
        R before G before B (G and B conditioned on the drawn levels, as ``log_prob`` conditions on data)."""
        with torch.no_grad():
            shape = torch.Size(sample_shape)
            k = Categorical(logits=self.logits.movedim(1, -1)).sample(shape)  # (..., B, H, W)
            onehot = F.one_hot(k, self.logits.shape[1]).movedim(-1, -3).unsqueeze(-3).to(self.locs.dtype)

            def pick(t: Tensor) -> Tensor:
                return (onehot * t).sum(-4)  # (..., B, C, H, W)

            loc, scale = pick(self.locs), pick(self.log_scales).exp()
            u = torch.rand_like(loc)
            noisy = loc + scale * (torch.log(u) - torch.log1p(-u))
            if self.coeffs is None:
                return self._quantise(noisy)
            c = pick(self.coeffs)
            red = self._quantise(noisy[..., 0, :, :])
            green = self._quantise(noisy[..., 1, :, :] + c[..., 0, :, :] * (2 * red - 1))
            blue = self._quantise(
                noisy[..., 2, :, :] + c[..., 1, :, :] * (2 * red - 1) + c[..., 2, :, :] * (2 * green - 1)
            )
            return torch.stack([red, green, blue], dim=-3)

    def _quantise(self, y: Tensor) -> Tensor:
        """Continuous y -> the level whose bin holds it, in [0, 1] data units (edge bins open to +-inf)."""
        return torch.round((y.clamp(-1, 1) + 1) / 2 * (self.levels - 1)) / (self.levels - 1)

    @property
    def mean(self) -> Tensor:
        """sum_k pi_k E_k[x] (B, C, H, W) in [0, 1], E_k the mean of component k's logistic clamped to the
        data range [-1, 1].

        Grey and R: the expectation of the continuous mixture clamped to the data range, within half a level
        of the discretised expectation (rounding moves a value by at most h). G and B: the earlier channels
        inside component k are replaced by their component means (plug-in), exact (up to the same rounding)
        only where the clamp is inactive. A display value, not a moment used by any bound.
        """
        log_scales = self.log_scales
        if self.coeffs is None:
            comp = clamped_logistic_mean(self.locs, log_scales)
        else:
            c, locs = self.coeffs, self.locs
            red = clamped_logistic_mean(locs[:, :, 0], log_scales[:, :, 0])
            green = clamped_logistic_mean(locs[:, :, 1] + c[:, :, 0] * red, log_scales[:, :, 1])
            blue = clamped_logistic_mean(locs[:, :, 2] + c[:, :, 1] * red + c[:, :, 2] * green, log_scales[:, :, 2])
            comp = torch.stack([red, green, blue], dim=2)
        weights = torch.softmax(self.logits, dim=1).unsqueeze(2)
        return ((weights * comp).sum(1) + 1) / 2


class DiscretizedLogisticMixtureLikelihood(nn.Module):
    """A mixture of ``num_mixtures`` (K) discretised logistics per pixel over ``levels`` values.

    Decoder channel layout, K channels per block:
      * grey (C = 1), P = 3K: [logits | means | log-scales];
      * RGB (C = 3), P = 10K: [logits | means R, G, B | log-scales R, G, B | coefficients c_0, c_1, c_2],
        the coefficients going through tanh (PixelCNN++).
    Means and log-scales are in [-1, 1] units; log-scales are clamped below at ``min_log_scale`` (-7, as
    PixelCNN++).
    """

    levels: int = 256

    def __init__(self, num_mixtures: int = 10, levels: int = 256, min_log_scale: float = -7.0) -> None:
        super().__init__()
        self.num_mixtures = num_mixtures
        self.levels = levels
        self.min_log_scale = min_log_scale

    def num_params(self, channels: int) -> int:
        if channels == 1:
            return 3 * self.num_mixtures
        if channels == 3:
            return 10 * self.num_mixtures
        raise ConfigError(
            f"the discretised logistic mixture models grey (1) or RGB (3) images, not {channels} channels; "
            "use likelihood=bernoulli or likelihood=gaussian"
        )

    def forward(self, params: Tensor) -> DiscretizedLogisticMixture:
        params = at_least_float32(params)
        b, p, h, w = params.shape
        k = self.num_mixtures
        if p not in (3 * k, 10 * k):
            raise ValueError(f"expected {3 * k} (grey) or {10 * k} (RGB) parameter channels, got {p}")
        c = 1 if p == 3 * k else 3
        logits = params[:, :k]
        blocks = params[:, k:].reshape(b, p // k - 1, k, h, w)  # block index = (role, channel)
        locs = blocks[:, :c].transpose(1, 2)
        log_scales = blocks[:, c : 2 * c].transpose(1, 2).clamp(min=self.min_log_scale)
        coeffs = torch.tanh(blocks[:, 2 * c :].transpose(1, 2)) if c == 3 else None
        return DiscretizedLogisticMixture(logits, locs, log_scales, coeffs, self.levels)
