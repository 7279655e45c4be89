"""Deep Gradient Compression's recipe in the Keras optimizer against a numpy restatement of the paper's
algorithm (``tests/support/dgc_reference.py``): Keras's SGD with momentum, wrapped, takes one step per
known per-rank gradient; the momentum moves into the compression. Exchanges are flat at every world size."""
import keras
import numpy as np
import pytest

import hvdkit.tensorflow.keras as hvdk

from dgc_reference import LR, MOMENTUM, N_B, N_W, STEPS, coefficients, reference

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", autouse=True)
def horovod():
    hvdk.init()


@pytest.mark.parametrize("nesterov", [False, True])
def test_keras_sgd_momentum_moves_into_topk(nesterov):
    if hvdk.size() == 1:
        pytest.skip("a lone rank compresses nothing and keeps SGD's own momentum")
    w, b = keras.Variable(np.ones(N_W, np.float32), name="w"), keras.Variable(np.ones(N_B, np.float32), name="b")
    optimizer = hvdk.DistributedOptimizer(keras.optimizers.SGD(LR, momentum=MOMENTUM, nesterov=nesterov),
                                          compression=f"topk:0.05,mc=1,min_numel={N_B + 1}")
    for step in range(STEPS):
        c, d = coefficients(hvdk.rank(), step)
        optimizer.apply([keras.ops.convert_to_tensor(c), keras.ops.convert_to_tensor(d)], [w, b])
    assert optimizer.momentum == 0.0, "the momentum must have moved into the compression"
    want_w, want_b = reference(hvdk.size(), "topk", 0.05, nesterov=nesterov)
    np.testing.assert_allclose(w.numpy(), want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), want_b, rtol=1e-5, atol=1e-6)


def test_mc_1_refuses_adam():
    if hvdk.size() == 1:
        pytest.skip("a lone rank compresses nothing, so no momentum moves")
    w = keras.Variable(np.ones(N_W, np.float32), name="w")
    optimizer = hvdk.DistributedOptimizer(keras.optimizers.Adam(0.01), compression="topk:0.05,mc=1")
    with pytest.raises(ValueError, match=r"mc=1.*not keras.optimizers.SGD"):
        optimizer.apply([keras.ops.ones(N_W)], [w])
