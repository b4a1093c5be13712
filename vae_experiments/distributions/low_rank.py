"""SOS-VAE's observation model (Langley et al., TMLR 2022): a low-rank-plus-diagonal Gaussian over all pixels.

p(x|z) = N(x; m, P P^T + diag(d)) over the N = C*H*W values of an image, P in R^{N x R}, d in R^N_{>0}
(REFERENCE.md 2.2). Everything goes through ``torch.distributions.LowRankMultivariateNormal``: the Woodbury
identity and the matrix determinant lemma on the R x R capacitance K = I_R + P^T D^-1 P, never N x N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, LowRankMultivariateNormal, constraints


def _fp32(t: Tensor) -> torch.autocast:
    """Autocast off around the Woodbury algebra: under bf16 autocast (trainer=gpu, trainer=cpu_bf16) the capacitance
    K = I + P^T D^-1 P of a small diagonal (the released 1e-5) loses hundreds of nats or its positive-definiteness."""
    return torch.autocast(t.device.type, enabled=False)


class LowRankImageNormal(Distribution):
    """``LowRankMultivariateNormal`` over flattened images, seen as a distribution over (C, H, W) images.

    ``mvn`` is the flat distribution (its ``cov_factor`` is P (B, N, R), ``cov_diag`` is d (B, N)); with
    ``float64`` it is built in double precision (capacitance, Cholesky and log-prob) and results are cast back
    to the dtype of the parameters. Every product of the factor runs with autocast off (``_fp32``).
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, mvn: LowRankMultivariateNormal, event_shape: torch.Size, dtype: torch.dtype) -> None:
        self.mvn = mvn
        self._dtype = dtype
        super().__init__(mvn.batch_shape, event_shape, validate_args=False)

    def _image(self, flat: Tensor) -> Tensor:
        return flat.reshape(*flat.shape[:-1], *self.event_shape).to(self._dtype)

    @property
    def mean(self) -> Tensor:
        return self._image(self.mvn.loc)

    @property
    def variance(self) -> Tensor:
        """Marginal variances diag(P P^T) + d, per pixel."""
        return self._image(self.mvn.variance)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """x = m + P w_P + sqrt(d) * w_D, w_P ~ N(0, I_R), w_D ~ N(0, I_N): spatially coherent through P."""
        with _fp32(self.mvn.loc):
            return self._image(self.mvn.rsample(torch.Size(sample_shape)))

    def log_prob(self, value: Tensor) -> Tensor:
        """-1/2 [ N log 2 pi + log det K + sum_i log d_i + r^T D^-1 r - |L_K^-1 P^T D^-1 r|^2 ], r = x - m.

        ``value`` (..., C, H, W); returns (..., B) nats summed over all values.
        """
        flat = value.flatten(-len(self.event_shape)).to(self.mvn.loc.dtype)
        with _fp32(flat):
            return self.mvn.log_prob(flat).to(self._dtype)

    def entropy(self) -> Tensor:
        """1/2 [ N (1 + log 2 pi) + log det K + sum_i log d_i ]."""
        with _fp32(self.mvn.loc):
            return self.mvn.entropy().to(self._dtype)


class LowRankGaussianLikelihood(nn.Module):
    """p(x|z) = N(m, P P^T + diag(d)), rank ``rank``; a density (``levels = None``).

    Decoder channel layout (``num_params(C)`` channels per pixel), in this order:
      * mean m: C channels, no output activation;
      * factor P: ``rank * C`` channels, read as (R, C, H, W) and flattened to P (B, N, R), so channel
        ``C + r*C + c`` at pixel (h, w) is P[c*H*W + h*W + w, r];
      * only for ``diagonal="learned"``: C channels, d = softplus(.) + ``min_diag``.
    ``diagonal="fixed"`` (the released SOS-VAE model) uses the constant d = ``min_diag``.
    ``diag_init``: the learned diagonal starts at ``diag_init`` + ``min_diag`` (through the bias of its output
    channels, up to what the weights add; the authors' 1e-5 by default).
    ``float64``: build the distribution (capacitance, Cholesky, log-prob) in double precision
    (REFERENCE.md 2.8); outputs come back in the parameters' dtype.
    """

    levels = None
    factorized = False  # one joint density over all pixels: no pixel-by-pixel (autoregressive) decoder

    def __init__(
        self,
        rank: int = 5,
        diagonal: Literal["learned", "fixed"] = "fixed",
        min_diag: float = 1e-5,
        float64: bool = False,
        diag_init: float = 1e-5,
    ) -> None:
        super().__init__()
        if diagonal not in ("learned", "fixed"):
            raise ValueError(f"likelihood.diagonal must be 'learned' or 'fixed', got {diagonal!r}")
        if diag_init <= 0:
            raise ValueError(f"likelihood.diag_init must be > 0, got {diag_init}")
        if rank < 1:
            raise ValueError(f"likelihood.rank must be at least 1, got {rank}")
        self.rank = rank
        self.diagonal = diagonal
        self.min_diag = min_diag
        self.float64 = float64
        self.diag_init = diag_init

    @property
    def _params_per_channel(self) -> int:
        return 1 + self.rank + (self.diagonal == "learned")

    def num_params(self, channels: int) -> int:
        return channels * self._params_per_channel

    def _channels(self, num_params: int) -> int:
        if num_params % self._params_per_channel:
            raise ValueError(
                f"{num_params} parameter channels do not fit rank {self.rank}, {self.diagonal} diagonal "
                f"(need a multiple of {self._params_per_channel})"
            )
        return num_params // self._params_per_channel

    def forward(self, params: Tensor) -> LowRankImageNormal:
        dtype = torch.promote_types(params.dtype, torch.float32)
        work = torch.float64 if self.float64 else dtype
        params = params.to(work)
        b, _, h, w = params.shape
        c = self._channels(params.shape[1])
        mean = params[:, :c].flatten(1)
        factor = params[:, c : c + self.rank * c].reshape(b, self.rank, c * h * w).transpose(1, 2)
        if self.diagonal == "learned":
            diag = F.softplus(params[:, c + self.rank * c :]).flatten(1) + self.min_diag
        else:
            diag = mean.new_full(mean.shape, self.min_diag)
        with _fp32(params):  # the capacitance and its Cholesky are computed here
            mvn = LowRankMultivariateNormal(mean, factor, diag, validate_args=False)  # no per-step host read
        return LowRankImageNormal(mvn, torch.Size((c, h, w)), dtype)

    def detach_spread(self, params: Tensor) -> Tensor:
        """``params`` with the factor (and learned diagonal) channels cut from the graph: only the mean trains.

        SOS-VAE's mean-only warm-up (``objective.mean_only_epochs``); the values, hence the density, are unchanged.
        """
        c = self._channels(params.shape[1])
        return torch.cat([params[:, :c], params[:, c:].detach()], dim=1)

    @torch.no_grad()
    def init_output_layer(self, conv: nn.Conv2d) -> None:
        """SOS-VAE's "stabilize" initialisation of the decoder's final 1x1 conv (REFERENCE.md 2.2).

        Mean and factor weights ~ N(0, 1e-5^2); mean bias 0.5, factor bias 0; diagonal bias softplus^-1(``diag_init``),
        the authors' softplus^-1(1e-5) ~ -11.5 by default (learned diagonal only; its weights keep their
        initialisation). At init p(x|z) ~ N(0.5, ~diag_init I).
        The runner calls this on the decoder's last layer, whose output channels follow ``num_params``.
        """
        if conv.bias is None:
            raise ValueError("init_output_layer needs a conv with a bias")
        c = self._channels(conv.out_channels)
        mean_and_factor = slice(0, c * (1 + self.rank))
        conv.weight[mean_and_factor].normal_(0.0, 1e-5)
        conv.bias[:c] = 0.5
        conv.bias[c : c * (1 + self.rank)] = 0.0
        if self.diagonal == "learned":
            conv.bias[c * (1 + self.rank) :] = math.log(math.expm1(self.diag_init))  # softplus^-1
