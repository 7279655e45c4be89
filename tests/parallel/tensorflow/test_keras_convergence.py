"""``model.fit`` with each compressor converges on the digits data like dense training.

The recipe of the torch side's test (``hvdkit train``'s defaults, in
tests/integration/test_fidelity.py): an MLP, SGD with momentum 0.9 at lr 0.05,
32 samples per rank and step, 20 epochs, every compressor with its defaults (no
dense warm-up added). Every run starts from the same weights and sees the same
batches, so the runs differ only by compression; the score is the mean test
accuracy of the last 3 epochs (one test sample is 0.28 points).

Slow (4 runs of 460 steps), so it is marked ``slow`` and runs in one launch only: mpirun with
2 ranks (scripts/run_parallel_tests.sh deselects it with -m "not slow" at -np 4 and lists it for
neither -np 1 nor --gloo; run by hand elsewhere, it skips).
"""
import keras
import numpy as np
import pytest

import hvdkit.tensorflow.keras as hvdk
from hvdkit.training.data import digits

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

EPOCHS, BATCH, LR = 20, 32, 0.05
# One run per kind of exchange (gathered with error feedback, a sparsifier, two rounds of factors); the
# compressors are the torch front end's code, checked against TorchOps bit for bit in tests/unit.
SPECS = ["topk:0.01", "onebit", "powersgd:2"]


@pytest.fixture(scope="module")
def data(expected_controller):
    hvdk.init()
    if hvdk.size() != 2 or expected_controller != "mpi":
        pytest.skip("the convergence runs are slow: they run in the mpirun -np 2 launch only")
    d = digits(seed=0)
    rank, size = hvdk.rank(), hvdk.size()
    x, x_test = d.x_train.reshape(len(d.x_train), -1), d.x_test.reshape(len(d.x_test), -1)
    return x[rank::size], d.y_train[rank::size], x_test, d.y_test


def train(data, compression):
    """(mean test accuracy of the last 3 epochs, the optimizer)."""
    x, y, x_test, y_test = data
    keras.utils.set_random_seed(0)  # same weights and batch order for every run
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10)])
    optimizer = hvdk.DistributedOptimizer(keras.optimizers.SGD(LR, momentum=0.9), compression=compression)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    accuracy = []
    score = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: accuracy.append(
        float(np.mean(np.argmax(model(x_test, training=False).numpy(), axis=1) == y_test))))
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, callbacks=[score])
    return float(np.mean(accuracy[-3:])), optimizer


@pytest.fixture(scope="module")
def dense(data):
    accuracy, _ = train(data, "none")
    assert accuracy >= 0.95, f"dense training reached only {accuracy:.4f}"
    return accuracy


@pytest.mark.parametrize("spec", SPECS)
def test_fit_with_compression_converges_like_dense(data, dense, spec):
    accuracy, optimizer = train(data, spec)
    assert accuracy >= dense - 0.01, f"{spec}: {accuracy:.4f} vs dense {dense:.4f}"
    ratio = optimizer.exchange.last_step_stats.compression_ratio
    assert ratio > (1.9 if spec in ("fp16", "bf16") else 2.5), f"{spec}: compression ratio {ratio}"
