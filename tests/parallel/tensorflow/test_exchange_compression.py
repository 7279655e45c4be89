"""Every compressor through hvdkit.tensorflow on real ranks equals a single-process simulation of it.

Each rank trains the same Keras model on its own data with
DistributedGradientTape, and also simulates all ranks in memory
(hvdkit.exchange.simulate with TFOps) with the same bucket plan, states and strategy;
weights must agree after every step, and be identical on every rank.
"""
import numpy as np
import pytest
import tensorflow as tf

import hvdkit.tensorflow as hvdkit_tf
from tape_support import FUSION_MB, assert_same_on_every_rank, loss_of, make_model, sgd, simulate, snapshot

pytestmark = pytest.mark.timeout(180)

STEPS = 3  # residuals carried twice; warm-up of 2 then one compressed step
SPECS = ["none", "fp16,ef=1", "bf16", "int8:64,ef=1", "topk:0.1,min_numel=0", "topk:0.1,approx=1,min_numel=0", "randomk:0.25,min_numel=0",
         "onebit,block=64,min_numel=0", "powersgd:2", "topk:0.05,warmup=2,min_numel=100"]


def train(model, rank, spec, hierarchical, steps):
    history, tape = [], None
    for step in range(steps):
        with tf.GradientTape() as tape:
            loss = loss_of(model, rank, step)
        tape = hvdkit_tf.DistributedGradientTape(tape, compression=spec, hierarchical=hierarchical,
                                                 fusion_mb=FUSION_MB)
        grads = tape.gradient(loss, model.trainable_variables)
        assert bool(tape.finite)
        sgd(model, grads)
        history.append(snapshot(model))
    return history, tape.exchange


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("hierarchical", [False, True])
def test_multi_rank_run_equals_single_process_simulation(hvd, spec, hierarchical):
    topo = hvdkit_tf.init()
    if hierarchical and not topo.hierarchical:
        pytest.skip("one node (or one rank per node): hierarchical mode is the flat exchange, tested above")
    real, exchange = train(make_model(), hvd.rank(), spec, hierarchical, STEPS)
    assert len(exchange.buckets) > 1
    simulated = simulate(topo.size, topo.local_size if topo.hierarchical else None, spec, hierarchical, STEPS)
    # MPI may add float16 payloads in another order than the simulation: one fp16 rounding per sum.
    atol = 1e-4 if spec.startswith("fp16") else 1e-6
    for step, (got, want) in enumerate(zip(real, simulated)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol, err_msg=f"step {step}")
    assert_same_on_every_rank(hvd, real[-1], name=f"compression.{spec}.{hierarchical}")
    stats = exchange.last_step_stats
    assert stats.step == STEPS - 1 and not stats.skipped
    if spec != "none":
        compressed = hvd.allreduce(tf.constant([stats.compressed_bytes, stats.compressed_dense_bytes], tf.int64),
                                   op=hvd.Sum, name=f"compressed.bytes.{spec}.{hierarchical}").numpy()
        if hvd.size() == 1:  # a lone rank applies its gradients uncompressed
            assert compressed[0] == compressed[1] == 0
        else:
            assert 0 < compressed[0] < compressed[1]
