"""SOS-VAE's observation model (Langley et al., TMLR 2022): a low-rank-plus-diagonal Gaussian over all pixels.

p(x|z) = N(x; m, P P^T + diag(d)) over the N = C*H*W values of an image, P in R^{N x R}, d in R^N_{>0}.
With the whitened factor and residual

    W = D^-1/2 P,   u = D^-1/2 (x - m),   K = I_R + W^T W = L L^T   (the R x R capacitance),

the Woodbury identity (P P^T + D)^-1 = D^-1 - D^-1 P K^-1 P^T D^-1 and the matrix determinant lemma
det(P P^T + D) = det K det D give, with O(N R^2) work and nothing N x N,

    log p(x) = -1/2 [ N log 2 pi + sum_i log d_i + 2 sum_j log L_jj + ||u||^2 - ||L^-1 W^T u||^2 ].

The log-density and the entropy are computed in float64, whatever the parameters' dtype. At the released diagonal
d = 1e-5 the singular values s_j of W reach 1e3-1e5, so K = I + W^T W has eigenvalues 1 + s_j^2 up to 1e10:
float32 (unit roundoff 6e-8) drops the unit part, nearly collinear columns of P then make K indefinite, and the two
terms of the Mahalanobis distance, each ~||u||^2, cancel to far fewer digits than the ~1e-7 relative accuracy a
density of ~5e5 nats (N = 116,412) needs to be right to 0.1 nat. In float64 (roundoff 1e-16 against K's
condition number of up to 1e10) the algebra is right to ~1e-5 nats there; a float32 result then carries only its
own rounding, half a unit in the last place (0.03 nats at 5e5). The float32 decoder outputs are promoted to float64
as W and u are formed (the networks stay in their dtype, the gradient flows back through the promotion) and the
results come back in the parameters' dtype, at least float32. Autocast is off around the algebra.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property

from vae_experiments.distributions.dtypes import at_least_float32

_LOG_2PI = math.log(2 * math.pi)
_EXACT = torch.float64  # the dtype of the algebra (module docstring)


def _no_autocast(t: Tensor) -> torch.autocast:
    """Autocast off around the algebra: under bf16 autocast (trainer=gpu, trainer=cpu_bf16) its matmuls would
    run in bf16."""
    return torch.autocast(t.device.type, enabled=False)


class LowRankImageNormal(Distribution):
    """N(m, P P^T + diag(d)) over flattened images, seen as a distribution over (C, H, W) images.

    ``loc`` m (B, N) and ``cov_factor`` P (B, N, R) are the decoder's values in its dtype (at least float32), which
    every result comes back in; ``cov_diag`` d (B, N) is float64. The log-density and the entropy are computed in
    float64 (module docstring): W = D^-1/2 P and u are formed in float64 directly from the float32 values, so P is
    never copied to float64 on its own. Written by hand rather than through
    ``torch.distributions.LowRankMultivariateNormal``, whose capacitance is formed in the parameters' dtype and whose
    ``linalg.cholesky`` raises (a host read per step on a GPU) when K is not numerically positive definite; here
    such a K (from NaN or infinite parameters) gives a NaN log-density and entropy, which the runner's
    non-finite-loss guard reports.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: Tensor, cov_factor: Tensor, cov_diag: Tensor, event_shape: torch.Size) -> None:
        self.loc, self.cov_factor, self.cov_diag = loc, cov_factor, cov_diag
        super().__init__(loc.shape[:-1], event_shape, validate_args=False)

    def _image(self, flat: Tensor) -> Tensor:
        return flat.reshape(*flat.shape[:-1], *self.event_shape).to(self.loc.dtype)

    @lazy_property
    def _inv_sqrt_diag(self) -> Tensor:
        return self.cov_diag.rsqrt()

    @lazy_property
    def _whitened_factor_t(self) -> Tensor:
        """W^T = P^T D^-1/2 (B, R, N) in float64, in the layout of the decoder's output."""
        return self.cov_factor.mT * self._inv_sqrt_diag.unsqueeze(-2)  # promoted to float64 in the one pass

    @lazy_property
    def _capacitance_tril(self) -> Tensor:
        """L with L L^T = K = I + W^T W; NaN where K is not numerically positive definite (no host read)."""
        wt = self._whitened_factor_t
        with _no_autocast(wt):
            k = torch.baddbmm(torch.eye(wt.shape[-2], dtype=wt.dtype, device=wt.device), wt, wt.mT)
            tril, info = torch.linalg.cholesky_ex(k)
        return torch.where((info == 0)[..., None, None], tril, torch.nan)

    @lazy_property
    def _half_log_det(self) -> Tensor:
        """1/2 log det(P P^T + D) = sum_j log L_jj + 1/2 sum_i log d_i."""
        return self._capacitance_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1) + 0.5 * self.cov_diag.log().sum(-1)

    @property
    def mean(self) -> Tensor:
        return self._image(self.loc)

    @property
    def variance(self) -> Tensor:
        """Marginal variances diag(P P^T) + d, per pixel."""
        return self._image(self.cov_factor.pow(2).sum(-1) + self.cov_diag)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """x = m + P w_P + sqrt(d) * w_D, w_P ~ N(0, I_R), w_D ~ N(0, I_N): spatially coherent through P."""
        shape = torch.Size(sample_shape) + self.batch_shape
        w_p = self.loc.new_empty(*shape, self.cov_factor.shape[-1]).normal_()
        w_d = self.loc.new_empty(*shape, self.loc.shape[-1]).normal_()
        with _no_autocast(self.loc):
            spread = torch.einsum("bnr,...br->...bn", self.cov_factor, w_p)
            return self._image(self.loc + spread + self.cov_diag.sqrt().to(self.loc.dtype) * w_d)

    def log_prob(self, value: Tensor) -> Tensor:
        """-1/2 [ N log 2 pi + sum_i log d_i + 2 sum_j log L_jj + ||u||^2 - ||L^-1 W^T u||^2 ], u = D^-1/2 (x - m).

        ``value`` (..., C, H, W); returns (..., B) nats summed over all values.
        """
        flat = value.flatten(-len(self.event_shape)).to(_EXACT)
        with _no_autocast(flat):
            u = (flat - self.loc) * self._inv_sqrt_diag
            wt_u = torch.einsum("...bn,brn->...br", u, self._whitened_factor_t)  # no copy of W per sample
            c = torch.linalg.solve_triangular(self._capacitance_tril, wt_u.unsqueeze(-1), upper=False).squeeze(-1)
            mahalanobis = u.pow(2).sum(-1) - c.pow(2).sum(-1)
            return (-0.5 * (flat.shape[-1] * _LOG_2PI + mahalanobis) - self._half_log_det).to(self.loc.dtype)

    def entropy(self) -> Tensor:
        """1/2 [ N (1 + log 2 pi) + log det K + sum_i log d_i ]."""
        with _no_autocast(self.loc):
            return (0.5 * self.loc.shape[-1] * (1 + _LOG_2PI) + self._half_log_det).to(self.loc.dtype)


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
    The log-density and entropy are computed in float64 from the decoder's output (module docstring); results come
    back in the output's dtype, at least float32.
    """

    levels = None
    factorized = False  # one joint density over all pixels: no pixel-by-pixel (autoregressive) decoder
    # for the runner's non-finite-loss message: the causes of a NaN this likelihood adds, and their fixes
    non_finite_advice = (
        "with the low-rank likelihood, a NaN also comes from decoder outputs so large (or already NaN) that "
        "I + P^T D^-1 P is not positive definite even in float64: lower the learning rate, clip gradients "
        "(trainer.gradient_clip_val=1.0) or raise likelihood.min_diag"
    )

    def __init__(
        self,
        rank: int = 5,
        diagonal: Literal["learned", "fixed"] = "fixed",
        min_diag: float = 1e-5,
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
        params = at_least_float32(params)
        b, _, h, w = params.shape
        c = self._channels(params.shape[1])
        n = c * h * w
        # one split (its gradient is one concatenation, not a zero-filled copy of params per slice)
        mean, factor, spread = params.split([c, self.rank * c, params.shape[1] - (1 + self.rank) * c], dim=1)
        factor = factor.reshape(b, self.rank, n).transpose(1, 2)
        if self.diagonal == "learned":
            diag = F.softplus(spread.flatten(1).to(_EXACT)) + self.min_diag
        else:
            diag = params.new_full((), self.min_diag, dtype=_EXACT).expand(b, n)
        return LowRankImageNormal(mean.flatten(1), factor, diag, torch.Size((c, h, w)))

    def detach_spread(self, params: Tensor) -> Tensor:
        """``params`` with the factor (and learned diagonal) channels cut from the graph: only the mean trains.

        SOS-VAE's mean-only warm-up (``objective.mean_only_epochs``); the values, hence the density, are unchanged.
        """
        c = self._channels(params.shape[1])
        return torch.cat([params[:, :c], params[:, c:].detach()], dim=1)

    @torch.no_grad()
    def init_output_layer(self, conv: nn.Conv2d) -> None:
        """SOS-VAE's "stabilize" initialisation of the decoder's final 1x1 conv.

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
