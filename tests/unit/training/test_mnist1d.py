"""``hvdkit train --dataset mnist1d``: MNIST-1D built locally by the ``mnist1d`` package (never
downloaded), the same on every rank, sharded like the other datasets; ``--model cnn`` becomes the
paper's 1-D conv net in both frameworks."""
import argparse
import math
import random
import socket
import urllib.request

import numpy as np
import pytest

from hvdkit.data import sharding
from hvdkit.errors import UsageError
from hvdkit.training import config as train_config
from hvdkit.training import data

TRAIN, TEST, LENGTH, CLASSES = 4000, 1000, 40, 10
CNN1D_PARAMETERS = (25 * 1 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (25 * 5 * 10 + 10)  # 5,210
MLP_PARAMETERS = LENGTH * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Every way to the network refuses (and says so), and the working directory is empty: the
    package's get_dataset would fetch a pickle from GitHub and write one here."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test that must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    import requests

    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.chdir(tmp_path)
    data._mnist1d_arrays.cache_clear()  # build it here, not from an earlier test's cache
    yield attempts
    data._mnist1d_arrays.cache_clear()
    assert not attempts, f"mnist1d tried the network: {attempts}"
    assert not list(tmp_path.iterdir()), "mnist1d wrote files into the working directory"


def test_builds_offline_identically_every_time_with_the_standard_shapes_and_classes(no_network):
    np.random.seed(7)
    random.seed(7)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    dataset = data.load("mnist1d", seed=0)
    assert dataset.x_train.shape == (TRAIN, 1, LENGTH) and dataset.x_test.shape == (TEST, 1, LENGTH)
    assert dataset.x_train.dtype == np.float32 and dataset.y_train.dtype == np.int64
    assert dataset.input_shape == (1, LENGTH) and dataset.num_classes == CLASSES
    assert np.isfinite(dataset.x_train).all() and np.isfinite(dataset.x_test).all()
    for labels in (dataset.y_train, dataset.y_test):  # every class, roughly balanced (500 each overall)
        counts = np.bincount(labels, minlength=CLASSES)
        assert len(counts) == CLASSES and counts.min() > 0.8 * len(labels) / CLASSES
    # make_dataset seeds the global generators; the job's own seeding must survive it
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]

    data._mnist1d_arrays.cache_clear()  # a second, separate build (as another rank makes), another --seed
    again = data.load("mnist1d", seed=3)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(dataset, name), getattr(again, name)), name
    again.x_train[0] = 0  # a caller's change does not reach the next load's arrays
    assert np.array_equal(data.load("mnist1d").x_train, dataset.x_train)


@pytest.mark.parametrize("size, remainder", [(2, "pad"), (4, "pad"), (3, "uneven")])
def test_shards_are_disjoint_and_cover_the_training_set(size, remainder):
    """What the loops read: 4,000 samples split evenly over 2 or 4 ranks (as training pads), and an
    uneven split over 3 (as evaluation does)."""
    shards = [sharding.shard_indices(TRAIN, rank, size, epoch=1, seed=0, remainder=remainder)
              for rank in range(size)]
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(TRAIN))


def test_the_option_is_offered_and_resnet18_is_refused(tmp_path):
    assert train_config.DATASETS == data.DATASETS
    parser = argparse.ArgumentParser()
    train_config.add_arguments(parser)
    config = train_config.from_args(parser.parse_args(["--dataset", "mnist1d", "--model", "cnn"]))
    assert (config.dataset, config.model) == ("mnist1d", "cnn")
    assert train_config.to_argv(config) == ["--model", "cnn", "--dataset", "mnist1d"]
    train_config.validate(train_config.TrainConfig(dataset="mnist1d", model="cnn", batch_size=50,
                                                   log_dir=str(tmp_path)), 2, TRAIN, environ={})
    with pytest.raises(UsageError, match="--model resnet18 takes images"):
        train_config.validate(train_config.TrainConfig(dataset="mnist1d", model="resnet18", log_dir=str(tmp_path)),
                              2, TRAIN, environ={})


def test_torch_cnn_is_the_papers_1d_conv_net():
    import torch

    from hvdkit.training import torch_models

    model = torch_models.build("cnn", (1, LENGTH), CLASSES)
    assert sum(p.numel() for p in model.parameters()) == CNN1D_PARAMETERS
    assert sum(isinstance(m, torch.nn.Conv1d) for m in model.modules()) == 3
    assert model(torch.zeros(4, 1, LENGTH)).shape == (4, CLASSES)
    mlp = torch_models.build("mlp", (1, LENGTH), CLASSES)
    assert sum(p.numel() for p in mlp.parameters()) == MLP_PARAMETERS
    assert mlp(torch.zeros(4, 1, LENGTH)).shape == (4, CLASSES)
    assert sum(p.numel() for p in torch_models.build("cnn", (1, 8, 8), CLASSES).parameters()) > CNN1D_PARAMETERS
    with pytest.raises(ValueError, match="resnet18 takes"):
        torch_models.build("resnet18", (1, LENGTH), CLASSES)


def test_keras_cnn_is_the_same_1d_conv_net_channels_last():
    import keras

    from hvdkit.training import tf_loop, tf_models, torch_models

    assert (tf_models.CNN1D_CHANNELS, tf_models.CNN1D_CONVS) == (torch_models.CNN1D_CHANNELS,
                                                                   torch_models.CNN1D_CONVS)
    model = tf_models.build("cnn", (1, LENGTH), CLASSES)
    assert tf_models.parameter_count(model) == CNN1D_PARAMETERS
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv1D)]
    assert [layer.output.shape[1] for layer in convs] == [19, 10, 5]  # torch's lengths with padding=1
    batch = tf_loop._channels_last(np.zeros((4, 1, LENGTH), dtype=np.float32))
    assert batch.shape == (4, LENGTH, 1)
    assert tuple(model(batch).shape) == (4, CLASSES)
    mlp = tf_models.build("mlp", (1, LENGTH), CLASSES)
    assert tf_models.parameter_count(mlp) == MLP_PARAMETERS and tuple(mlp(batch).shape) == (4, CLASSES)
    with pytest.raises(ValueError, match="resnet18 takes"):
        tf_models.build("resnet18", (1, LENGTH), CLASSES)
    assert math.prod(tf_loop._channels_last(np.zeros((2, 3, 8, 8))).shape[1:3]) == 64  # images as before
