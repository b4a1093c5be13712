"""The data part: shapes, levels, splits, binarisation, files on disk, toys, distributed loading, config nodes."""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pickle
import zipfile
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.data import _update_dataloader
from PIL import Image
from torch.utils.data import DistributedSampler

from vae_experiments.data import (
    CIFAR10,
    MNIST,
    CelebA,
    Digits,
    FashionMNIST,
    Loading,
    Omniglot,
    Source,
    Synthetic,
    Toy2D,
    VAEDataModule,
    omniglot,
    sources,
)
from vae_experiments.data.toy2d import TOYS, sample_toy
from vae_experiments.errors import ConfigError
from vae_experiments.train import train

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"


# ------------------------------------------------------------ fixtures: small files in torchvision's layout


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks the md5 of the real files; the tiny fixtures only need to exist."""
    import torchvision.datasets.celeba as celeba
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.omniglot as omniglot

    for module in (cifar, celeba, omniglot):
        monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file (big-endian header: 0, 0, type 0x08 = uint8, number of dimensions; then the sizes)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (10, 28, 28)), rng.integers(0, 256, (4, 28, 28))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, images in (("train", train), ("t10k", test)):
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(len(images)) % 10)
    return tmp_path, train, test


@pytest.fixture
def cifar_root(tmp_path: Path, no_md5: None) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    test_rows = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    batches = {f"data_batch_{i}": rng.integers(0, 256, (4, 3072), dtype=np.uint8) for i in range(1, 6)}
    for name, rows in [*batches.items(), ("test_batch", test_rows)]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": [0] * len(rows)}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return tmp_path, test_rows.reshape(-1, 3, 32, 32)


@pytest.fixture
def celeba_root(tmp_path: Path, no_md5: None) -> tuple[Path, list[np.ndarray]]:
    """20 lossless 218x178 images: partition 12 train / 4 valid / 4 test, and the five list files."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.png" for i in range(1, 21)]
    images = [rng.integers(0, 256, (218, 178, 3), dtype=np.uint8) for _ in names]
    for name, image in zip(names, images, strict=True):
        Image.fromarray(image).save(folder / "img_align_celeba" / name)
    parts = [0] * 12 + [1] * 4 + [2] * 4
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, parts, strict=True)))
    (folder / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    attrs = " ".join(f"a{k}" for k in range(40))
    (folder / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n{attrs}\n" + "".join(f"{n} " + " ".join(["1", "-1"] * 20) + "\n" for n in names)
    )
    (folder / "list_bbox_celeba.txt").write_text(
        f"{len(names)}\nimage_id x_1 y_1 width height\n" + "".join(f"{n} 1 2 3 4\n" for n in names)
    )
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{len(names)}\n"
        + " ".join(f"l{k}" for k in range(10))
        + "\n"
        + "".join(f"{n}" + " 5" * 10 + "\n" for n in names)
    )
    return tmp_path, images


@pytest.fixture
def omniglot_root(tmp_path: Path, no_md5: None) -> Path:
    """15 white 105x105 PNGs, 3 alphabets; each character's first drawing has a black top-left quarter."""
    folder = tmp_path / "omniglot-py"
    layout = {"images_background": {"Alpha": 2, "Beta": 2}, "images_evaluation": {"Gamma": 1}}
    for background, alphabets in layout.items():
        for alphabet, n_characters in alphabets.items():
            for c in range(1, n_characters + 1):
                character = folder / background / alphabet / f"character{c:02d}"
                character.mkdir(parents=True)
                for k in range(1, 4):
                    image = np.full((105, 105), 255, dtype=np.uint8)
                    if k == 1:
                        image[:52, :52] = 0
                    Image.fromarray(image, mode="L").save(character / f"01{k:02d}.png")
        zipfile.ZipFile(folder / f"{background}.zip", "w").close()  # torchvision requires the archives
    return tmp_path


# ---------------------------------------------------------------- digits, shapes and levels


def _all(dataset) -> torch.Tensor:
    """Every example of an in-memory split, read the way the DataLoader reads a batch."""
    return dataset.__getitems__(list(range(len(dataset))))


def test_digits_shape_levels_splits_and_range() -> None:
    dm = Digits.datamodule(binarize="none", batch_size=64)
    assert dm.data_shape == (1, 8, 8) and dm.levels == 17
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1297, 250, 250)
    x = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (64, 1, 8, 8)
    assert x.min() >= 0 and x.max() <= 1
    # values are k / 16 exactly: 17 grey levels
    every = torch.cat([_all(dm.train_set), next(iter(dm.val_dataloader()))])
    assert torch.equal(every * 16, (every * 16).round()) and every.max() == 1
    # the three splits partition the 1,797 images (pixel sums add up to sklearn's total)
    from sklearn.datasets import load_digits

    total = sum(float(_all(s).sum()) * 16 for s in (dm.train_set, dm.val_set, dm.test_set))
    assert total == pytest.approx(float(load_digits().images.sum()))


def test_digits_split_is_deterministic_per_seed() -> None:
    def test_images(seed: int) -> torch.Tensor:
        dm = Digits.datamodule(seed=seed)
        dm.setup()
        return dm.test_set.data

    assert torch.equal(test_images(0), test_images(0))
    assert not torch.equal(test_images(0), test_images(1))


def test_train_subset_caps_training_examples() -> None:
    dm = Digits.datamodule(train_subset=100)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (100, 250, 250)


@pytest.mark.parametrize(("binarize", "levels"), [("none", 17), ("static", 2), ("dynamic", 2)])
def test_levels_follow_binarisation(binarize: str, levels: int) -> None:
    assert Digits.datamodule(binarize=binarize).levels == levels


# ---------------------------------------------------------------- binarisation


def test_static_binarisation_is_fixed_and_dynamic_redraws() -> None:
    static = Digits.datamodule(binarize="static")
    dynamic = Digits.datamodule(binarize="dynamic")
    grey = Digits.datamodule(binarize="none")
    for dm in (static, dynamic, grey):
        dm.setup()
    epoch1, epoch2 = _all(static.train_set), _all(static.train_set)
    assert torch.equal(epoch1, epoch2) and set(epoch1.unique().tolist()) == {0.0, 1.0}
    draw1, draw2 = _all(dynamic.train_set), _all(dynamic.train_set)
    assert set(draw1.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(draw1, draw2)
    # dynamic draws are Bernoulli(grey value): their mean matches the grey images' mean
    assert draw1.mean() == pytest.approx(float(_all(grey.train_set).mean()), abs=0.01)
    # evaluation stays deterministic, binarised once with the seed (the same bits as static)
    assert torch.equal(_all(dynamic.val_set), _all(dynamic.val_set))
    assert torch.equal(_all(dynamic.val_set), _all(static.val_set))
    assert torch.equal(_all(dynamic.test_set), _all(static.test_set))


@pytest.mark.parametrize("source", [CIFAR10, CelebA, Toy2D], ids=lambda s: s.name)
def test_rgb_and_toy_sources_have_no_binarize_option(source: type[Source]) -> None:
    with pytest.raises(ConfigError, match=rf"^dataset\.binarize is not an option of dataset={source.name}: remove it"):
        source.datamodule(binarize="none")


def test_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^unknown dataset\.binarize=yes: choose one of none, static, dynamic$"):
        MNIST.datamodule(binarize="yes")
    with pytest.raises(ConfigError, match=r"^unknown dataset\.toy=moons: choose one of 8gaussians, "):
        Toy2D.datamodule(toy="moons")
    with pytest.raises(ConfigError, match=r"^dataset\.on_device must be true, false or auto, got 'yes'$"):
        Digits.datamodule(on_device="yes")
    with pytest.raises(ConfigError, match=r"^dataset\.binarize=static needs grey images .* set dataset\.binarize=none"):
        Synthetic.datamodule(shape=(3, 8, 8), binarize="static")


# ---------------------------------------------------------------- sources on disk


def test_fashion_mnist_from_debian_package(tmp_path: Path) -> None:
    if not sources._debian_fashion_mnist():
        pytest.skip(f"Debian package dataset-fashion-mnist absent ({sources.DEBIAN_FASHION_MNIST})")
    dm = FashionMNIST.datamodule(root=tmp_path / "cache", val_size=5000)
    dm.require_files()
    dm.setup()
    assert dm.data_shape == (1, 28, 28) and dm.levels == 256
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55_000, 5_000, 10_000)
    raw = {}
    for split in ("train", "t10k"):
        with gzip.open(sources.DEBIAN_FASHION_MNIST / f"{split}-images-idx3-ubyte.gz") as f:
            raw[split] = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    assert int(dm.test_set.data[0].sum()) == int(raw["t10k"][0].sum())
    pool_sum = int(dm.train_set.data.sum()) + int(dm.val_set.data.sum())
    assert pool_sum == int(raw["train"].astype(np.int64).sum())
    x = next(iter(dm.test_dataloader()))
    assert torch.allclose(x[0, 0] * 255, torch.from_numpy(raw["t10k"][0].astype(np.float32)), atol=1e-4)
    assert not (tmp_path / "cache").exists()  # read in place: nothing decompressed, nothing written


def test_mnist_from_idx_files(mnist_root) -> None:
    root, train, test = mnist_root
    dm = MNIST.datamodule(root=root, val_size=3, batch_size=4)
    dm.require_files()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (7, 3, 4)
    x = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0] * 255, torch.from_numpy(test.astype(np.float32)), atol=1e-4)
    assert int(dm.train_set.data.sum()) + int(dm.val_set.data.sum()) == int(train.sum())


def test_cifar10_from_python_batches(cifar_root) -> None:
    root, test = cifar_root
    dm = CIFAR10.datamodule(root=root, val_size=5, batch_size=8)
    assert dm.data_shape == (3, 32, 32) and dm.levels == 256
    dm.require_files()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (15, 5, 6)
    x = next(iter(dm.test_dataloader()))
    assert x.shape == (6, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(x * 255, torch.from_numpy(test.astype(np.float32)), atol=1e-4)


def test_celeba_official_partition_full_frame(celeba_root) -> None:
    root, images = celeba_root
    dm = CelebA.datamodule(root=root, batch_size=4)
    assert dm.data_shape == (3, 218, 178) and dm.levels == 256
    dm.require_files()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 4, 4)
    x = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 218, 178) and x.dtype == torch.float32
    expected = torch.from_numpy(images[16]).permute(2, 0, 1).float() / 255
    assert torch.allclose(x[0], expected, atol=1e-6)


def test_celeba_image_size_and_sos_vae_subset(celeba_root) -> None:
    root, _ = celeba_root
    dm = CelebA.datamodule(root=root, image_size=32, subset=10, batch_size=7)
    assert dm.data_shape == (3, 32, 32)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (7, 2, 1)
    chosen = [set(s.indices) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert not (chosen[0] & chosen[1]) and not (chosen[0] & chosen[2]) and not (chosen[1] & chosen[2])
    x = next(iter(dm.train_dataloader()))
    assert x.shape == (7, 3, 32, 32) and x.min() >= 0 and x.max() <= 1


def test_omniglot_resized_inverted_and_cached(omniglot_root: Path) -> None:
    dm = Omniglot.datamodule(root=omniglot_root, test_size=3, val_size=2, binarize="none")
    assert dm.data_shape == (1, 28, 28) and dm.levels == 256
    dm.require_files()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (10, 2, 3)
    pool = torch.cat([_all(s) for s in (dm.train_set, dm.val_set, dm.test_set)])
    assert pool.shape == (15, 1, 28, 28)
    # strokes are 1 after inversion: the 5 marked drawings have their top-left 14x14 quarter black -> 1
    quarters = pool[:, 0, :13, :13].mean(dim=(1, 2))
    assert int((quarters > 0.99).sum()) == 5 and float(pool[quarters < 0.5].max()) == 0.0
    cache = omniglot_root / "omniglot-py" / omniglot.CACHE
    assert cache.is_file()
    again = Omniglot.datamodule(root=omniglot_root, test_size=3, val_size=2)
    again.setup()
    assert torch.equal(again.test_set.data, dm.test_set.data)


@pytest.mark.parametrize(
    ("source", "folder"),
    [
        (MNIST, "MNIST/raw"),
        (FashionMNIST, "FashionMNIST/raw"),
        (CIFAR10, "cifar-10-batches-py"),
        (CelebA, "celeba"),
        (Omniglot, "omniglot-py"),
    ],
    ids=lambda x: getattr(x, "name", x),
)
def test_missing_data_is_one_line_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: type[Source], folder: str
) -> None:
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    dm = source.datamodule(root=tmp_path)
    for step in (dm.require_files, dm.prepare_data, dm.setup):
        with pytest.raises(ConfigError) as err:
            step()
        message = str(err.value)
        assert "\n" not in message
        assert str(tmp_path / folder) in message and "dataset.download=true" in message


def test_corrupted_files_are_config_errors(mnist_root) -> None:
    root, _, _ = mnist_root
    (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    dm = MNIST.datamodule(root=root)
    dm.require_files()  # the files are there ...
    with pytest.raises(ConfigError, match="corrupted") as err:  # ... but unreadable
        dm.setup()
    assert "\n" not in str(err.value) and "dataset.download=true" in str(err.value)


# ---------------------------------------------------------------- toy2d


def test_toy2d_shapes_and_levels() -> None:
    dm = Toy2D.datamodule(toy="rings", n_train=1000, val_size=100, n_test=200, batch_size=50)
    assert dm.data_shape == (2,) and dm.levels is None
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1000, 100, 200)
    x = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 2) and x.dtype == torch.float32


def test_toy_8gaussians_has_8_modes() -> None:
    points = sample_toy("8gaussians", 8000, seed=0)
    angles = torch.arange(8) * (math.pi / 4)
    centres = 2.0 / 1.414 * torch.stack([angles.cos(), angles.sin()], dim=1)
    distance, nearest = torch.cdist(points, centres).min(dim=1)
    assert float(distance.max()) < 0.1
    counts = torch.bincount(nearest, minlength=8)
    assert int(counts.min()) > 850 and int(counts.max()) < 1150


def test_toy_checkerboard_fills_alternate_squares() -> None:
    points = sample_toy("checkerboard", 8000, seed=0)
    assert float(points.abs().max()) <= 4
    cells = torch.floor(points / 2).long()
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())
    assert len({tuple(c) for c in cells.tolist()}) == 8


def test_toy_rings_has_four_radii() -> None:
    points = sample_toy("rings", 8000, seed=0)
    radii = torch.tensor([0.75, 1.5, 2.25, 3.0])
    gap, ring = (points.norm(dim=1, keepdim=True) - radii).abs().min(dim=1)
    assert float(gap.max()) < 0.4
    assert torch.bincount(ring, minlength=4).tolist() == pytest.approx([2000] * 4, abs=150)


def test_toy_2spirals_lie_on_two_point_symmetric_arms() -> None:
    points = sample_toy("2spirals", 4000, seed=0)
    t = torch.linspace(0, 3 * math.pi, 4000)
    arm = torch.stack([-t.cos() * t + 0.25, t.sin() * t + 0.25], dim=1) / 3
    curve = torch.cat([arm, -arm])
    distance = torch.cdist(points, curve).min(dim=1).values
    assert float(torch.quantile(distance, 0.99)) < 0.4
    assert points.mean(dim=0).abs().max() < 0.1


@pytest.mark.parametrize("toy", TOYS)
def test_toys_are_seeded_and_scaled(toy: str) -> None:
    assert torch.equal(sample_toy(toy, 100, seed=3), sample_toy(toy, 100, seed=3))
    assert not torch.equal(sample_toy(toy, 100, seed=3), sample_toy(toy, 100, seed=4))
    assert torch.allclose(sample_toy(toy, 100, seed=3, scale=2.0), 2 * sample_toy(toy, 100, seed=3))


# ---------------------------------------------------------------- loaders


def test_distributed_sampler_gives_disjoint_shards() -> None:
    dm = Digits.datamodule(batch_size=32, train_subset=1000)
    dm.setup()
    loader = dm.train_dataloader()
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(dm.train_set, num_replicas=2, rank=rank, shuffle=True, seed=0)
        distributed = _update_dataloader(loader, sampler)  # what Lightning does with use_distributed_sampler
        batches = list(distributed)
        assert all(b.shape[1:] == (1, 8, 8) and b.dtype == torch.float32 for b in batches)
        indices = list(sampler)
        assert torch.equal(torch.cat(batches), dm.train_set.data[indices].float() / 16)
        shards.append(set(indices))
    assert len(shards[0]) == len(shards[1]) == 500
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(1000))


def test_loaders_use_batch_sizes_and_keep_order_for_evaluation() -> None:
    dm = Digits.datamodule(batch_size=64, eval_batch_size=100, num_workers=0)
    dm.setup()
    assert next(iter(dm.train_dataloader())).shape[0] == 64
    val = list(dm.val_dataloader())
    assert [len(b) for b in val] == [100, 100, 50]
    assert torch.equal(torch.cat(val), _all(dm.val_set))


def test_in_memory_loader_with_workers() -> None:
    dm = Digits.datamodule(batch_size=250, binarize="dynamic", num_workers=1)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert sum(len(b) for b in batches) == 1297
    assert set(torch.cat(batches).unique().tolist()) == {0.0, 1.0}


# ---------------------------------------------------------------- configs


NODES = {  # conf/dataset/NAME.yaml: (source, data_shape, levels) with the node's settings
    "digits": (Digits, (1, 8, 8), 2),
    "mnist": (MNIST, (1, 28, 28), 256),
    "fashion_mnist": (FashionMNIST, (1, 28, 28), 256),
    "cifar10": (CIFAR10, (3, 32, 32), 256),
    "celeba": (CelebA, (3, 218, 178), 256),
    "omniglot": (Omniglot, (1, 28, 28), 2),
    "toy2d": (Toy2D, (2,), None),
    "synthetic": (Synthetic, (3, 32, 32), 256),
}


def test_there_is_one_node_per_source() -> None:
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(NODES)


@pytest.mark.parametrize("name", sorted(NODES))
def test_every_dataset_node_builds_its_datamodule_without_data(name: str, compose_config, tmp_path: Path) -> None:
    source, shape, levels = NODES[name]
    cfg = compose_config([f"dataset={name}"], tmp_path)
    options = {f.name for f in dataclasses.fields(source)}
    shared = {f.name for f in dataclasses.fields(Loading)}
    # the node is flat: exactly the source's own options, then loader options every source has
    assert set(cfg.dataset) - {"_target_"} - shared == options
    dm = hydra.utils.instantiate(cfg.dataset, shuffle_seed=3)
    assert isinstance(dm, VAEDataModule) and type(dm.source) is source and dm.name == name
    assert dm.data_shape == shape and dm.levels == levels
    assert dm.loading.shuffle_seed == 3 and dm.batch_size == cfg.dataset.batch_size
    if "root" in options:
        assert dm.source.root == cfg.paths.data_dir and dm.source.download is False


FOREIGN = {  # an option of another source
    "digits": "+dataset.image_size=64",
    "mnist": "+dataset.toy=rings",
    "fashion_mnist": "+dataset.test_size=100",
    "cifar10": "+dataset.binarize=static",
    "celeba": "+dataset.val_size=100",
    "omniglot": "+dataset.shape=[1,8,8]",
    "toy2d": "+dataset.hflip=true",
    "synthetic": "+dataset.subset=100",
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_each_source_refuses_a_foreign_option(name: str, make_cfg) -> None:
    key = FOREIGN[name].removeprefix("+").split("=")[0]
    with pytest.raises(ConfigError) as err:
        train(make_cfg(f"dataset={name}", FOREIGN[name]))
    message = str(err.value)
    assert message.startswith(f"{key} is not an option of dataset={name}: remove it (its options: ")
    assert "\n" not in message


def test_synthetic_images_have_the_asked_shape_and_levels() -> None:
    dm = Synthetic.datamodule(shape=(3, 7, 5), n_train=20, val_size=4, n_test=6, batch_size=8)
    assert dm.data_shape == (3, 7, 5) and dm.levels == 256
    dm.setup()
    x = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 7, 5) and x.dtype == torch.float32
    torch.testing.assert_close(x * 255, (x * 255).round(), rtol=0, atol=1e-4)  # on the 8-bit grid
    assert x.min() >= 0 and x.max() <= 1
    assert len(dm.val_set) == 4 and len(dm.test_set) == 6
    again = Synthetic.datamodule(shape=(3, 7, 5), n_train=20, val_size=4, n_test=6)
    again.setup()
    assert torch.equal(dm.test_set.__getitems__(list(range(6))), again.test_set.__getitems__(list(range(6))))
    with pytest.raises(ConfigError, match=r"dataset\.shape"):
        Synthetic.datamodule(shape=(5, 5))
