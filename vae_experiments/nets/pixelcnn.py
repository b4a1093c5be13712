"""PixelCNN decoder with a small receptive field, conditioned on z as in VLAE (Chen et al. 2017).

    p(x|z) = prod_i p(x_i | z, x_WindowAround(i))                                 (VLAE, Sec. 3.1)

A non-autoregressive *base* decoder maps z to ``cond_channels`` feature maps at the image size; they are
concatenated with the image and fed to a masked stack. The stack is the blind-spot-free two-stream design
of Gated PixelCNN (van den Oord et al. 2016): a vertical stream sees only rows strictly above, a
horizontal stream sees the pixels to the left in the current row plus the vertical stream. With
``n_layers`` L, ``kernel_size`` k = 2r + 1 and ``kernel_height`` kh, pixel i sees exactly the (2Lr +
1)-wide, (L kh)-tall rectangle above it plus the Lr pixels to its left: VLAE's "A x B" field with A = 2Lr
+ 1, B = L kh (``receptive_field``).

Within the centre pixel, colours are ordered R -> G -> B (``channel_masks``): the output parameters of
colour c see x_i's colours < c only. Without channel masks the centre pixel is hidden entirely, as a
likelihood that is itself channel-autoregressive (PixelCNN++'s discretised-logistic mixture) needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vae_experiments.errors import ConfigError
from vae_experiments.nets.masked import MaskedConv2d, channel_mask, groups

GREY = (0.299, 0.587, 0.114)


def _gate(a: Tensor) -> Tensor:
    """Gated activation tanh(a_1) * sigmoid(a_2) over the two channel halves (Gated PixelCNN, Eq. 2)."""
    x, g = a.chunk(2, dim=1)
    return torch.tanh(x) * torch.sigmoid(g)


def _ones(out_ch: int, in_ch: int, kh: int, kw: int) -> Tensor:
    return torch.ones(out_ch, in_ch, kh, kw)


class _MaskedLayer(nn.Module):
    """One mask-B layer of both streams; the vertical kernel adds ``kh`` rows and ``r`` columns on each side,
    the horizontal kernel ``r`` columns to the left plus the centre tap (colour groups a <= b)."""

    def __init__(self, width: int, kh: int, r: int, gated: bool, n_groups: int) -> None:
        super().__init__()
        self.gated = gated
        out = 2 * width if gated else width
        hg = groups(width, n_groups)
        hg_out = torch.cat([hg, hg]) if gated else hg
        self.conv_v = MaskedConv2d(_ones(out, width, kh + 1, 2 * r + 1), (r, r, kh, 0))
        mask_h = _ones(out, width, 1, r + 1)
        mask_h[:, :, 0, r] = channel_mask(hg, hg_out, strict=False)
        self.conv_h = MaskedConv2d(mask_h, (r, 0, 0, 0))
        self.link = nn.Conv2d(out, out, 1)  # from the vertical stream: it sees only rows above, no mask needed
        if gated:
            self.out = MaskedConv2d(channel_mask(hg, hg, strict=False)[..., None, None], (0, 0, 0, 0))

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        if self.gated:
            v_pre = self.conv_v(v)
            return _gate(v_pre), h + self.out(_gate(self.conv_h(h) + self.link(v_pre)))
        v = F.elu(self.conv_v(v))
        return v, h + self.conv_h(F.elu(h)) + self.link(v)


class _Res1x1(nn.Module):
    """ResNet block of two channel-masked 1x1 convolutions: h + W_2 elu(W_1 elu(h))."""

    def __init__(self, width: int, n_groups: int) -> None:
        super().__init__()
        mask = channel_mask(groups(width, n_groups), groups(width, n_groups), strict=False)[..., None, None]
        self.c1 = MaskedConv2d(mask, (0, 0, 0, 0))
        self.c2 = MaskedConv2d(mask, (0, 0, 0, 0))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.c2(F.elu(self.c1(F.elu(h))))


class PixelCNNDecoder(nn.Module):
    """Autoregressive decoder ``forward(z, x) -> params (B, P, H, W)``; ``sample(z, likelihood) -> x``.

    Arguments (defaults: VLAE's binary setup, docs/vlae.md#architecture): ``hidden_channels`` 12; ``n_layers`` 6 masked
    layers (the first of mask A, the rest mask B); ``kernel_size`` 3 (odd, the width of each kernel);
    ``kernel_height`` 1 (rows each vertical layer adds); ``block`` ``residual`` (ELU) or ``gated``;
    ``tied``: the mask-B layers share one set of weights; ``res1x1_blocks`` 1x1 ResNet blocks inserted after
    every ``res1x1_every``-th masked layer (not after the last); ``grayscale``: the context is made grey,
    0.299R + 0.587G + 0.114B while x_i is modelled in colour; ``channel_masks``: R -> G -> B inside the centre
    pixel (None: on when P is C or 2C, the per-channel layouts where parameter p models colour p mod C);
    ``base``: partial decoder z -> (cond_channels, H, W); ``conditional`` false with ``base`` None gives the
    unconditional PixelCNN.
    """

    autoregressive = True

    def __init__(
        self,
        latent_dim: int,
        out_shape: tuple[int, int, int],
        data_shape: tuple[int, int, int],
        base: Callable[..., nn.Module] | None = None,
        conditional: bool = True,
        cond_channels: int = 4,
        hidden_channels: int = 12,
        n_layers: int = 6,
        kernel_size: int = 3,
        kernel_height: int = 1,
        block: Literal["residual", "gated"] = "residual",
        tied: bool = True,
        res1x1_blocks: int = 2,
        res1x1_every: int = 2,
        grayscale: bool = False,
        channel_masks: bool | None = None,
    ) -> None:
        super().__init__()
        n_params, height, width = out_shape
        c = data_shape[0]
        if kernel_size < 3 or kernel_size % 2 == 0 or kernel_height < 1 or n_layers < 1:
            raise ConfigError("decoder.kernel_size must be odd and >= 3, kernel_height and n_layers >= 1")
        if block not in ("residual", "gated"):
            raise ConfigError(f"decoder.block must be residual or gated, got {block!r}")
        if conditional and base is None:
            raise ConfigError("decoder.conditional=true needs decoder.base (a decoder z -> cond feature maps)")
        if grayscale and c != 3:
            raise ConfigError(f"decoder.grayscale needs RGB data, got {c} channels; set decoder.grayscale=false")
        if channel_masks is None:
            channel_masks = c > 1 and n_params in (c, 2 * c)
        if channel_masks and n_params % c:
            raise ConfigError(f"decoder.channel_masks needs P divisible by C, got P={n_params}, C={c}")
        self.data_shape = tuple(data_shape)
        self.channel_masks = channel_masks and c > 1
        self.grayscale = grayscale
        self.n_layers, self.kernel_height, self.r = n_layers, kernel_height, kernel_size // 2
        self.base = None
        if conditional:
            self.base = base(latent_dim=latent_dim, out_shape=(cond_channels, height, width), data_shape=data_shape)
        cc = cond_channels if conditional else 0
        n_groups = c if self.channel_masks else 1
        hg = groups(hidden_channels, n_groups)
        r, kh, f = self.r, kernel_height, hidden_channels

        # Mask A layer: spatial context (grey or colour, plus z features) and the centre's earlier colours
        ctx = (1 if grayscale else c) + cc
        self.first_v = MaskedConv2d(_ones(f, ctx, kh, 2 * r + 1), (r, r, kh, -1))
        self.first_h = MaskedConv2d(_ones(f, ctx, 1, r), (r, -1, 0, 0))
        # With a grey context x_i's colours must not reach later pixels: they enter only just before the head.
        colours = torch.arange(c) if self.channel_masks else torch.zeros(c)
        early = colours if not grayscale else torch.full((c,), n_groups)
        centre = channel_mask(torch.cat([early, -torch.ones(cc)]), hg, strict=True)
        self.first_centre = MaskedConv2d(centre[..., None, None], (0, 0, 0, 0))
        self.late_centre = None
        if grayscale and self.channel_masks:
            late = channel_mask(colours, hg, strict=True)[..., None, None]
            self.late_centre = MaskedConv2d(late, (0, 0, 0, 0))
        self.first_link = nn.Conv2d(f, f, 1)

        shared = _MaskedLayer(f, kh, r, block == "gated", n_groups) if tied else None
        self.layers = nn.ModuleList(
            [shared or _MaskedLayer(f, kh, r, block == "gated", n_groups) for _ in range(n_layers - 1)]
        )
        gaps = [res1x1_every > 0 and (l + 1) % res1x1_every == 0 and l + 1 < n_layers for l in range(n_layers)]
        self.res1x1 = nn.ModuleList(
            nn.Sequential(*[_Res1x1(f, n_groups) for _ in range(res1x1_blocks if gap else 0)]) for gap in gaps
        )
        out_groups = torch.arange(n_params) % c if self.channel_masks else torch.zeros(n_params)
        self.head = MaskedConv2d(channel_mask(hg, out_groups, strict=False)[..., None, None], (0, 0, 0, 0))

    @property
    def receptive_field(self) -> str:
        """VLAE's "A x B": the A-wide, B-tall rectangle above pixel i plus (A - 1) / 2 pixels to the left."""
        return f"{2 * self.n_layers * self.r + 1}x{self.n_layers * self.kernel_height}"

    def _net(self, x: Tensor, cond: Tensor | None) -> Tensor:
        xs = 2 * x - 1
        ctx = xs
        if self.grayscale:
            ctx = 2 * torch.einsum("bchw,c->bhw", x, x.new_tensor(GREY))[:, None] - 1
        if cond is not None:
            ctx, xs = torch.cat([ctx, cond], 1), torch.cat([xs, cond], 1)
        v = self.first_v(ctx)
        h = self.res1x1[0](self.first_h(ctx) + self.first_centre(xs) + self.first_link(v))
        for layer, res in zip(self.layers, self.res1x1[1:], strict=True):
            v, h = layer(v, h)
            h = res(h)
        if self.late_centre is not None:
            h = h + self.late_centre(2 * x - 1)
        return self.head(F.elu(h))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        """Teacher-forced parameters of p(x_i | z, x_<i) for every pixel in one parallel pass."""
        return self._net(x, self.base(z) if self.base is not None else None)

    @torch.no_grad()
    def sample(self, z: Tensor, likelihood: Callable[[Tensor], torch.distributions.Distribution]) -> Tensor:
        """x_i ~ p(x_i | z, x_<i) pixel by pixel (and colour by colour with channel masks), batched over z.

        The base features are computed once; each step runs the stack only on ``window(i, j)``. On the CPU the
        per-pixel passes run on one thread: they are too small to share, and on a busy 2-core machine two
        threads made a 28x28 draw many times slower (BENCHMARKS.md, VLAE)."""
        c, height, width = self.data_shape
        cond = self.base(z) if self.base is not None else None
        x = z.new_zeros(z.shape[0], c, height, width)
        steps = [slice(k, k + 1) for k in range(c)] if self.channel_masks else [slice(None)]
        threads = torch.get_num_threads()
        if z.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            for i in range(height):
                for j in range(width):
                    rows, cols = self.window(i, j)
                    for ch in steps:
                        ctx = cond[:, :, rows, cols] if cond is not None else None
                        params = self._net(x[:, :, rows, cols], ctx)
                        x[:, ch, i, j] = likelihood(params).sample()[:, ch, -1, j - cols.start]
        finally:
            torch.set_num_threads(threads)
        return x

    def window(self, i: int, j: int) -> tuple[slice, slice]:
        """Rows and columns whose inputs reach pixel (i, j): the n_layers kh rows above and n_layers r columns each
        side. Every activation the output at (i, j) depends on lies inside, so the stack run on this crop gives
        exactly the full image's parameters at (i, j) (the crop's zero padding lands only outside the field)."""
        reach_h, reach_w = self.n_layers * self.kernel_height, self.n_layers * self.r
        width = self.data_shape[2]
        return slice(max(0, i - reach_h), i + 1), slice(max(0, j - reach_w), min(width, j + reach_w + 1))
