"""Data: one DataModule (``VAEDataModule``) serving one ``Source`` per data set.

``conf/dataset/NAME.yaml`` builds it with ``_target_: vae_experiments.data.SOURCE.datamodule``, its keys flat: the
source's own options and the ``Loading`` options every data set has (batch sizes, workers, pinning, ``on_device``).

- ``Digits`` (``digits``): scikit-learn's 8x8 digits, bundled: runs anywhere.
- ``MNIST`` (``mnist``), ``FashionMNIST`` (``fashion_mnist``): 28x28 grey, official test split.
- ``CIFAR10`` (``cifar10``): RGB 32x32, official test split.
- ``Omniglot`` (``omniglot``): 28x28 grey, seeded test split.
- ``CelebA`` (``celeba``): RGB 218x178 or square crops, read per item.
- ``Toy2D`` (``toy2d``): Soft-IntroVAE's 2-D point sets.
- ``Synthetic`` (``synthetic``): smooth random images of any shape, for tests and benchmarks.

Every held-out split, ``train_subset`` and the binarisation of grey sources are fixed by the source's ``seed``; the
run's own seed sets only the order of the training batches (``Loading.shuffle_seed``) and the random draws of dynamic
binarisation and flips.
"""

from vae_experiments.data.celeba import CelebA
from vae_experiments.data.datamodule import Loading, Source, VAEDataModule
from vae_experiments.data.omniglot import Omniglot
from vae_experiments.data.sources import CIFAR10, MNIST, Digits, FashionMNIST, Synthetic
from vae_experiments.data.toy2d import Toy2D

__all__ = [
    "CIFAR10",
    "MNIST",
    "CelebA",
    "Digits",
    "FashionMNIST",
    "Loading",
    "Omniglot",
    "Source",
    "Synthetic",
    "Toy2D",
    "VAEDataModule",
]
