"""Datasets for ``hvdkit train``, as numpy arrays every rank builds alike.

Nothing is downloaded: ``digits`` is scikit-learn's bundled 8x8 handwritten
digits (1,797 images), and ``synthetic`` is generated from the seed, with
class-dependent means so that a model can learn it and accuracy means
something.
"""
import dataclasses

import numpy as np

@dataclasses.dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # float32, shape (n, *input_shape)
    y_train: np.ndarray  # int64 class labels
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple  # one sample's shape, channels first

    def describe(self):
        return f"{len(self.x_train)} train / {len(self.x_test)} test samples of shape {self.input_shape}"


def split(x, y, test_fraction, seed):
    """A seeded stratified split, identical on every rank."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        chosen = rng.choice(members, size=int(round(len(members) * test_fraction)), replace=False)
        test[chosen] = True
    return x[~test], y[~test], x[test], y[test]


def digits(seed=0):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0 - 0.5)[:, None, :, :]  # (n, 1, 8, 8), centred
    y = bunch.target.astype(np.int64)
    return Dataset(*split(x, y, test_fraction=0.2, seed=seed), num_classes=10, input_shape=(1, 8, 8))


def synthetic(seed=0, samples=4096, image_size=32, num_classes=10):
    """Images of Gaussian noise around one random template per class."""
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((num_classes, 3, image_size, image_size)).astype(np.float32)
    y = rng.integers(0, num_classes, size=samples).astype(np.int64)
    x = templates[y] * 0.5 + rng.standard_normal((samples, 3, image_size, image_size)).astype(np.float32)
    return Dataset(*split(x, y, test_fraction=0.2, seed=seed), num_classes=num_classes,
                   input_shape=(3, image_size, image_size))


LOADERS = {"digits": digits, "synthetic": synthetic}
DATASETS = tuple(LOADERS)


def load(name, seed=0):
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return LOADERS[name](seed)
