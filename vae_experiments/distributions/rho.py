"""The rho-VAE posterior (Ferdowsi et al., arXiv 1909.06236): an AR(1) Gaussian q(z|x) = N(mu, s T(rho)).

T(rho)_jk = rho^|j-k| is the correlation matrix of a stationary AR(1) chain over the latent index 1..d;
mu in R^d and the two per-example scalars rho = tanh(a) in (-1, 1) and s = exp(log_s) > 0 come from three
linear heads. The math follows docs/rho_vae.md#estimators (the paper with its typos fixed); ``reference_faithful=True``
reproduces the authors' released code instead (docs/rho_vae.md#where-the-authors-code-differs), which is *not* a valid
ELBO.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, constraints
from torch.distributions.kl import kl_divergence, register_kl
from torch.distributions.utils import lazy_property

from vae_experiments.distributions.dtypes import at_least_float32
from vae_experiments.distributions.priors import StandardNormal
from vae_experiments.nets.heads import output_heads

log = logging.getLogger(__name__)
_LOG_2PI = math.log(2 * math.pi)


def log1m_tanh_sq(a: Tensor) -> Tensor:
    """log(1 - tanh(a)^2) = -2 log cosh(a) = 2 log 2 - 2 logaddexp(a, -a), finite for any finite a.

    The naive form is log 0 = -inf once tanh rounds to +-1 (|a| > ~9 in float32).
    """
    return 2 * math.log(2) - 2 * torch.logaddexp(a, -a)


def _ar1_scan(x: Tensor, a: Tensor) -> Tensor:
    """y_1 = x_1, y_j = a y_{j-1} + x_j over the last dim, as a log-depth parallel scan (``a`` broadcasts as
    ``x[..., :1]``). Unrolled, y_j = sum_{k<=j} a^{j-k} x_k; after the step with offset o every y_j holds the sum over
    the last 2o terms, so ceil(log2 d) vectorised steps replace the d-step loop, and nothing divides by a."""
    offset, d = 1, x.shape[-1]
    while offset < d:
        x = x + F.pad(a * x[..., :-offset], (offset, 0))  # y_j += a y_{j-offset}, zeros shifted in
        offset *= 2
        if offset < d:
            a = a * a
    return x


class _AR1Filter(torch.autograd.Function):
    # Written by hand because autograd would record each of the scan's ~20 tiny ops (d = 10 in the rho-VAE) and replay
    # their backward nodes one by one, while the filter's adjoint is the same filter run backwards in time: the
    # gradient is one reverse scan, which makes the step faster (BENCHMARKS.md, rho-VAE).
    @staticmethod
    def forward(ctx: Any, x: Tensor, rho: Tensor) -> Tensor:
        a = rho.unsqueeze(-1)
        y = _ar1_scan(x, a)
        ctx.save_for_backward(y, a)
        ctx.rho_shape = rho.shape
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor, Tensor | None]:
        """lambda_j = g_j + rho lambda_{j+1} (the reverse filter): dL/dx = lambda, dL/drho = sum_j lambda_j y_{j-1}."""
        y, a = ctx.saved_tensors
        lam = _ar1_scan(grad_y.flip(-1), a).flip(-1)
        grad_rho = None
        if ctx.needs_input_grad[1]:
            grad_rho = (lam[..., 1:] * y[..., :-1]).sum(-1).sum_to_size(ctx.rho_shape)
        return lam, grad_rho


def ar1_filter(x: Tensor, rho: Tensor) -> Tensor:
    """The AR(1) recursion y_1 = x_1, y_j = rho y_{j-1} + x_j over the last dim of ``x``; ``rho`` broadcasts against
    ``x[..., 0]``. A log-depth scan with its adjoint written out (``_AR1Filter``); faster than the dense O(d^2)
    Toeplitz matmul at every d measured (10 to 256)."""
    return _AR1Filter.apply(x, rho)


class AR1Normal(Distribution):
    """N(loc, s T(rho)) over R^d, T_jk = rho^|j-k|, rho = tanh(rho_logit), s = exp(log_s).

    ``loc`` (B, d); ``rho_logit`` and ``log_s`` (B,): one rho and one s per example, shared by all d dims.

    Cholesky factor of s T: sqrt(s) L_T with (L_T)_j1 = rho^{j-1} and (L_T)_jk = rho^{j-k} sqrt(1 - rho^2) for
    2 <= k <= j, i.e. the reparameterised sample
        z~_1 = sqrt(s) eps_1,   z~_j = rho z~_{j-1} + sqrt(s (1 - rho^2)) eps_j  (j >= 2),   z = mu + z~.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "loc": constraints.real_vector,
        "rho_logit": constraints.real,
        "log_s": constraints.real,
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: Tensor, rho_logit: Tensor, log_s: Tensor, validate_args: bool | None = None) -> None:
        self.loc = loc
        self.rho_logit = rho_logit
        self.log_s = log_s
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    @property
    def dim(self) -> int:
        return self.event_shape[0]

    @lazy_property
    def rho(self) -> Tensor:
        return torch.tanh(self.rho_logit)

    @lazy_property
    def log1m_rho_sq(self) -> Tensor:
        """log(1 - rho^2), computed from the pre-activation (see ``log1m_tanh_sq``)."""
        return log1m_tanh_sq(self.rho_logit)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return self.log_s.exp().unsqueeze(-1).expand_as(self.loc)

    @property
    def covariance_matrix(self) -> Tensor:
        """s T(rho), dense (B, d, d); for tests and diagnostics only."""
        idx = torch.arange(self.dim, device=self.loc.device)
        lag = (idx[:, None] - idx[None, :]).abs().to(self.loc.dtype)
        return self.log_s.exp()[..., None, None] * self.rho[..., None, None].pow(lag)

    @lazy_property
    def log_det(self) -> Tensor:
        """log det(s T) = d log s + (d - 1) log(1 - rho^2); shared by log q, the entropy and the KL."""
        return self.dim * self.log_s + (self.dim - 1) * self.log1m_rho_sq

    def _innovation_log_scales(self) -> Tensor:
        """log (sqrt(s), sqrt(s (1 - rho^2)), ..., sqrt(s (1 - rho^2))): stds of e_1 and of e_j, j >= 2."""
        l1m = self.log1m_rho_sq.unsqueeze(-1)
        return 0.5 * (self.log_s.unsqueeze(-1) + F.pad(l1m.expand(*l1m.shape[:-1], self.dim - 1), (1, 0)))

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """z = mu + z~ with z~ the AR(1) chain above; shape (*sample_shape, B, d)."""
        return self.rsample_and_log_prob(sample_shape)[0]

    def rsample_and_log_prob(self, sample_shape: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
        """A sample and its log q in one pass: the standardised innovations of z are the eps that made it, so

        log q(z) = -1/2 [ d log 2 pi + d log s + (d-1) log(1 - rho^2) + ||eps||^2 ]   (equal to ``log_prob(z)``).
        """
        eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        z = self.loc + ar1_filter(self._innovation_log_scales().exp() * eps, self.rho)
        log_q = -0.5 * (self.dim * _LOG_2PI + self.log_det + eps.pow(2).sum(-1))
        return z, log_q

    def log_prob(self, value: Tensor) -> Tensor:
        """Innovation form, with r = z - mu, e_1 = r_1, e_j = r_j - rho r_{j-1}:

        log q = -1/2 [ d log 2 pi + d log s + (d-1) log(1 - rho^2)
                       + ( e_1^2 + sum_{j>=2} e_j^2 / (1 - rho^2) ) / s ].

        Near |rho| = 1 the covariance is numerically singular: once 1 - rho^2 is below the dtype's
        resolution (|a| > ~9 in float32, > ~18 in float64) e_j is dominated by the rounding of z - mu and is
        amplified by 1 / sqrt(1 - rho^2). Values stay finite (and, for moderate mu and s, so do float32
        gradients; float64 up to |a| = 50 at least) but carry no information: evaluate these in float64.
        """
        if self._validate_args:
            self._validate_sample(value)
        r = value - self.loc
        rho = self.rho.unsqueeze(-1)
        innov = torch.cat([r[..., :1], r[..., 1:] - rho * r[..., :-1]], dim=-1)
        # Multiply by exp(-log std) rather than divide by the std: as |rho| -> 1 the std of e_j underflows
        # and the quotient rule's std^-2 would overflow the gradient.
        innov = innov * (-self._innovation_log_scales()).exp()
        return -0.5 * (self.dim * _LOG_2PI + self.log_det + innov.pow(2).sum(-1))

    def entropy(self) -> Tensor:
        """H = 1/2 [ d (1 + log 2 pi) + log det(s T) ],  det(s T) = s^d (1 - rho^2)^{d-1}."""
        return 0.5 * (self.dim * (1 + _LOG_2PI) + self.log_det)


class RandomWalkNormal(AR1Normal):
    """``reference_faithful``: what the authors' released ``models.py`` computes. NOT A VALID ELBO.

    * ``rsample`` ignores rho: z~_j = z~_{j-1} + sqrt(s) eps_j, a random walk with Var z_j = j s.
    * ``log_prob``, ``entropy`` and ``covariance_matrix`` are inherited from ``AR1Normal``: they describe
      N(mu, s T(rho)), NOT the distribution the samples come from, so an importance-sampled NLL built on them
      is meaningless.
    * The KL to N(0, I) is the reference's batch KL split into per-example terms
      (see ``_kl_random_walk_std_normal``): its s and rho part is divided by the batch size. The resulting
      "loss" is not an upper bound on -log p(x).

    Use it only to reproduce the paper's curves (docs/rho_vae.md#where-the-authors-code-differs).
    """

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + ((0.5 * self.log_s).exp().unsqueeze(-1) * eps).cumsum(-1)

    def rsample_and_log_prob(self, sample_shape: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
        """The random-walk sample and the AR(1) density at it (the inherited ``log_prob``, see above)."""
        z = self.rsample(sample_shape)
        return z, self.log_prob(z)


def _is_standard_normal(p: Independent, event_shape: torch.Size) -> bool:
    base = p.base_dist
    return (
        isinstance(base, Normal)
        and p.reinterpreted_batch_ndims == 1
        and p.event_shape == event_shape
        and bool((base.loc == 0).all())
        and bool((base.scale == 1).all())
    )


@register_kl(AR1Normal, StandardNormal)
def _kl_ar1_std_normal(q: AR1Normal, p: StandardNormal) -> Tensor:
    """KL( N(mu, s T(rho)) || N(0, I) ) = 1/2 [ ||mu||^2 + d (s - 1 - log s) - (d - 1) log(1 - rho^2) ]."""
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL between an AR1Normal of {q.event_shape} and N(0, I) of {p.event_shape}")
    s_term = q.dim * (q.log_s.exp() - 1) - q.log_det  # = d (s - 1 - log s) - (d - 1) log(1 - rho^2)
    return 0.5 * (q.loc.pow(2).sum(-1) + s_term)


@register_kl(RandomWalkNormal, StandardNormal)
def _kl_random_walk_std_normal(q: RandomWalkNormal, p: StandardNormal) -> Tensor:
    """The reference code's KL, per example, so that the sum over a batch of B examples equals

        mean_i 1/2 [ sum_batch ||mu||^2 + d (s_i - 1 - log s_i) - (d - 1) log(1 - rho_i^2) ]
      = sum_i 1/2 [ ||mu_i||^2 + ( d (s_i - 1 - log s_i) - (d - 1) log(1 - rho_i^2) ) / B ].

    The ||mu||^2 part is batch-summed, the s/rho part batch-averaged (down-weighted by B): not a KL.
    """
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL between an AR1Normal of {q.event_shape} and N(0, I) of {p.event_shape}")
    s_term = q.dim * (q.log_s.exp() - 1) - q.log_det
    return 0.5 * (q.loc.pow(2).sum(-1) + s_term / q.batch_shape.numel())


@register_kl(AR1Normal, Independent)
def _kl_ar1_independent(q: AR1Normal, p: Independent) -> Tensor:
    """Any other ``Independent``: the closed form when its values are those of N(0, I) (a host read: priors give
    ``StandardNormal``, which dispatches above without it), else ``NotImplementedError`` (the Monte-Carlo KL)."""
    if not _is_standard_normal(p, q.event_shape):
        raise NotImplementedError("closed-form KL of an AR1Normal is only known against N(0, I)")
    standard = StandardNormal(p.base_dist.loc.new_zeros(()), q.dim)
    return kl_divergence(q, standard)


class RhoPosterior(nn.Module):
    """Linear heads from h: mu (d), the rho pre-activation a (1, rho = tanh a) and log s (1).

    ``head_hidden``: null for linear heads (one joint matmul), or the width of a separate hidden layer (activation
    ``head_act``) in front of each of the three (the authors' CNN-VAE; see ``BranchedHeads``).

    ``reference_faithful=True`` returns a ``RandomWalkNormal``: the authors' random-walk sampler and batch-weighted KL
    (docs/rho_vae.md#where-the-authors-code-differs). That is NOT a valid bound and its ``log_prob`` is not the density
    of its samples; it exists only to reproduce the paper's curves, and says so: a warning when built, and
    ``valid_bound = False``, which the runner writes to the metrics (``test/valid_bound``). The default is the correct
    AR(1) posterior.
    """

    def __init__(
        self,
        in_features: int,
        latent_dim: int,
        reference_faithful: bool = False,
        head_hidden: int | None = None,
        head_act: str = "elu",
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.reference_faithful = reference_faithful
        self.valid_bound = not reference_faithful
        self.head = output_heads(in_features, [latent_dim, 1, 1], head_hidden, head_act)
        if reference_faithful:
            log.warning(
                "posterior.reference_faithful=true: the rho-VAE authors' random-walk sampler and batch-weighted KL. "
                "The ELBO, loss and NLL of this run are NOT bounds on -log p(x); use them only beside the paper's "
                "curves"
            )

    def forward(self, h: Tensor) -> Distribution:
        cls = RandomWalkNormal if self.reference_faithful else AR1Normal
        loc, rho_logit, log_s = at_least_float32(self.head(h)).split([self.latent_dim, 1, 1], dim=-1)
        # No argument validation: every real value is valid for the three heads (it would only catch NaN, which the
        # runner reports as a non-finite loss), and it costs a dozen ops per step.
        return cls(loc, rho_logit.squeeze(-1), log_s.squeeze(-1), validate_args=False)
