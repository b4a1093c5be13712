"""Where data sets are read from: the per-user cache (or ``VAE_DATA_DIR``), never the current folder; Fashion-MNIST
straight from the Debian package's archives."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from vae_experiments.data import FashionMNIST, sources
from vae_experiments.data.on_disk import default_data_dir
from vae_experiments.errors import ConfigError


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"VAE_DATA_DIR": "mine", "XDG_CACHE_HOME": "xdg"}, "mine"),
        ({"XDG_CACHE_HOME": "xdg"}, "xdg/vae_experiments/data"),
        ({}, "home/.cache/vae_experiments/data"),
    ],
    ids=["VAE_DATA_DIR", "XDG_CACHE_HOME", "home"],
)
def test_data_dir_is_the_per_user_cache_in_the_config_and_in_python(
    env: dict[str, str], expected: str, compose_config, tmp_path: Path, monkeypatch
) -> None:
    for var in ("VAE_DATA_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var, value in env.items():
        monkeypatch.setenv(var, str(tmp_path / value))
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["dataset=mnist"], tmp_path / "run")
    assert cfg.paths.data_dir == cfg.dataset.root == str(tmp_path / expected)
    assert default_data_dir() == tmp_path / expected  # a source built without a config (root's default)
    assert FashionMNIST.datamodule().source.root == tmp_path / expected


def test_fashion_mnist_reads_the_debian_archives_in_place(tmp_path: Path, monkeypatch) -> None:
    """Two tiny idx archives standing in for the Debian package: the images come out as written, and neither the
    data folder nor the current folder gets a file."""
    debian = tmp_path / "debian"
    debian.mkdir()
    g = torch.Generator().manual_seed(0)
    images = {"train": torch.randint(0, 256, (30, 28, 28), generator=g, dtype=torch.uint8)}
    images["t10k"] = torch.randint(0, 256, (7, 28, 28), generator=g, dtype=torch.uint8)
    for split, x in images.items():
        header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in x.shape)
        (debian / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + x.numpy().tobytes()))
        (debian / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 0])))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.chdir(tmp_path)
    dm = FashionMNIST.datamodule(root=tmp_path / "cache", val_size=10)
    dm.require_files()
    dm.setup()
    assert torch.equal(dm.test_set.data[:, 0], images["t10k"])
    pool = torch.cat([dm.train_set.data, dm.val_set.data])[:, 0]
    assert (len(dm.train_set), len(dm.val_set)) == (20, 10)
    assert torch.equal(pool.flatten(1).sum(1).sort().values, images["train"].flatten(1).sum(1).sort().values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["debian"]


def test_an_unreadable_debian_archive_is_a_one_line_config_error(tmp_path: Path, monkeypatch) -> None:
    debian = tmp_path / "debian"
    debian.mkdir()
    for name in sources.IDX_FILES:
        (debian / f"{name}.gz").write_bytes(gzip.compress(b"not an idx file"))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    dm = FashionMNIST.datamodule(root=tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"^Fashion-MNIST in .*debian is unreadable .*: reinstall") as err:
        dm.setup()
    assert "\n" not in str(err.value)
