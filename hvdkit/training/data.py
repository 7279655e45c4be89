"""Datasets for ``hvdkit train``, as numpy arrays every rank builds alike.

Nothing is downloaded: ``digits`` is scikit-learn's bundled 8x8 handwritten
digits (1,797 images), ``synthetic`` is generated from the seed, with
class-dependent means so that a model can learn it and accuracy means
something, and ``mnist1d`` is the standard MNIST-1D (Greydanus & Kobak 2020:
4,000 train / 1,000 test sequences of length 40, 10 classes), built by the
``mnist1d`` package's ``make_dataset`` from the digit templates it ships.
"""
import dataclasses
import functools
import random

import numpy as np

@dataclasses.dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # float32, shape (n, *input_shape)
    y_train: np.ndarray  # int64 class labels
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple  # one sample's shape, channels first: (C, H, W) images, (C, L) sequences

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


# MNIST-1D's standard arguments (mnist1d.data.get_dataset_args, set here so that a change of the package's
# defaults cannot change the data): 5,000 sequences, the first 80 % for training, seed 42 as published.
MNIST1D_ARGS = {"num_samples": 5000, "train_split": 0.8, "final_seq_length": 40, "shuffle_seq": False, "seed": 42}


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays():
    """(x_train, y_train, x_test, y_test), built once per process (about a second).

    Only ``make_dataset`` is used: the package's ``get_dataset`` downloads a pickle from GitHub (and
    writes one to the working directory); ``make_dataset`` computes everything from the templates in
    ``mnist1d.data.get_templates``. It seeds NumPy's and Python's global random generators
    (``mnist1d.utils.set_seed``), so their states are put back afterwards: the job's own seeding stays
    in force."""
    from mnist1d.data import get_dataset_args, make_dataset
    from mnist1d.utils import ObjectView

    args = ObjectView(dict(get_dataset_args(as_dict=True), **MNIST1D_ARGS))
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        built = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)

    def sequences(x):  # (n, 40) float64 -> (n, 1, 40) float32: one channel, channels first
        return np.ascontiguousarray(x, dtype=np.float32)[:, None, :]

    return (sequences(built["x"]), np.asarray(built["y"], dtype=np.int64),
            sequences(built["x_test"]), np.asarray(built["y_test"], dtype=np.int64))


def mnist1d(seed=0):
    """MNIST-1D as published (its own seed, 42): the same data whatever ``seed`` is, so that accuracy
    compares with the paper's (CNN about 94 %, MLP about 68 %); ``seed`` still sets the job's initial
    weights and sample order. Every rank builds the same arrays; the job shards them."""
    del seed
    x_train, y_train, x_test, y_test = (a.copy() for a in _mnist1d_arrays())
    return Dataset(x_train, y_train, x_test, y_test, num_classes=10,
                   input_shape=(1, MNIST1D_ARGS["final_seq_length"]))


LOADERS = {"digits": digits, "synthetic": synthetic, "mnist1d": mnist1d}
DATASETS = tuple(LOADERS)


def load(name, seed=0):
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return LOADERS[name](seed)
