"""The epoch bookkeeping both loops share: one EpochTotals, one record (summed over ranks by the
loop's own allreduce), one traffic rule for local SGD, and TensorBoard events from each framework's
own writer, holding the scalars of metrics.jsonl."""
import json
import subprocess
import sys
import types

import pytest

from hvdkit.training import metrics


def sum_over(ranks):
    """A stand-in for the loops' float64 allreduce: every rank's values, summed element-wise."""
    return lambda values: [sum(column) for column in zip(values, *ranks)]


def test_a_record_sums_every_ranks_totals_and_averages_the_loss():
    mine = metrics.EpochTotals()
    mine.add_step(32, 0.5, (100, 400), loss=2.0)
    mine.add_step(16, 0.5, (100, 400), loss=1.0)
    # rank 1: mean loss, samples, seconds, bytes sent, dense bytes, wire bytes inside / between nodes, dense ring's
    other = [1.0, 48, 1.0, 300, 800, 0, 0, 0]
    record = metrics.epoch_record(3, mine, 0.75, sum_over([other]), size=2)
    assert record == {"epoch": 3, "loss": (1.5 + 1.0) / 2, "test_accuracy": 0.75,
                      "samples_per_sec": 96 / 1.0, "samples_per_sec_per_rank": 48.0,
                      "bytes_per_step": 500 / 2 / 2, "compression_ratio": 1600 / 500, "intra_node_bytes_per_step": 0.0,
                      "cross_node_bytes_per_step": 0.0, "cross_node_ratio": 1.0, "world_size": 2, "steps": 2}
    assert "ratio 3.2x" in metrics.format_epoch(record) and "between nodes" not in metrics.format_epoch(record)


def test_across_nodes_the_epoch_line_gives_the_bytes_and_ratio_on_the_slow_link():
    """A dense hierarchical step at 2 nodes x 2 ranks (bucket B = 4000 bytes): reduce-scatter B/2 and allgather
    B/2 inside the node, an allreduce of the B/2 share between nodes (B/2); the flat ring sends 2(3)/4 B, half
    of it between nodes. Payload bytes exceed the dense bucket (ratio < 1), the slow link's fall 1.5x."""
    bucket = 4000
    payload = bucket + bucket / 2 + bucket / 2  # reduce-scatter input, cross allreduce of the share, allgather
    mine = metrics.EpochTotals()
    mine.add_step(8, 0.5, (payload, bucket, bucket, bucket / 2, 0.75 * bucket), loss=1.0)
    record = metrics.epoch_record(0, mine, 0.5, sum_over([[1.0, 8, 0.5, payload, bucket, bucket, bucket / 2,
                                                             0.75 * bucket]]), size=2)
    assert record["compression_ratio"] == pytest.approx(bucket / payload)
    assert record["cross_node_bytes_per_step"] == bucket / 2 and record["intra_node_bytes_per_step"] == bucket
    assert record["cross_node_ratio"] == pytest.approx(1.5)
    line = metrics.format_epoch(record)
    assert line.endswith("7.8 KiB/step sent, 2.0 KiB between nodes  ratio 1.5x between nodes"), line


def test_keras_running_mean_loss_stands_for_the_sum_of_its_steps():
    totals = metrics.EpochTotals()
    for running_mean in (3.0, 2.5, 2.0):
        totals.add_step(8, 0.1, (0, 0))
        totals.set_mean_loss(running_mean)
    assert totals.steps == 3 and totals.samples == 24 and totals.loss_sum == pytest.approx(6.0)
    assert metrics.epoch_record(0, totals, 1.0, sum_over([]), size=1)["loss"] == pytest.approx(2.0)


def test_totals_round_trip_through_a_checkpoint_dict():
    totals = metrics.EpochTotals()
    totals.add_step(32, 0.25, (10, 40), loss=0.5)
    saved = json.loads(json.dumps(totals.to_dict()))
    assert saved == {"loss_sum": 0.5, "steps": 1, "samples": 32, "seconds": 0.25, "bytes_sent": 10, "dense_bytes": 40,
                     "intra_node_bytes": 0, "cross_node_bytes": 0, "dense_cross_node_bytes": 0}
    assert metrics.EpochTotals.from_dict(saved).to_dict() == saved
    older = {key: value for key, value in saved.items() if "node" not in key}  # saved before the link classes
    assert metrics.EpochTotals.from_dict(older).to_dict() == saved


STATS = types.SimpleNamespace(bytes_sent=10, dense_bytes=40, intra_node_bytes=6, cross_node_bytes=4,
                              dense_cross_node_bytes=20)


@pytest.mark.parametrize("steps, last_scope, stats, expected", [
    (3, None, STATS, (10, 40, 6, 4, 20)),  # warm-up: the exchange's bytes
    (3, None, None, (0, 0, 0, 0, 0)),  # a warm-up step whose exchange sent nothing
    (5, None, None, (0, 400, 0, 0, 0)),  # a local step
    (6, "world", None, (400, 400, 0, 0, 0)),  # a local step that averaged the model
])
def test_step_traffic_of_post_local_sgd(steps, last_scope, stats, expected):
    averager = types.SimpleNamespace(steps=steps, warmup_steps=4, last_scope=last_scope)
    assert metrics.step_traffic(averager, stats, 400) == expected
    if stats is not None:
        assert metrics.step_traffic(None, stats, 400) == (10, 40, 6, 4, 20)  # synchronous training


def test_an_unknown_framework_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"framework must be one of 'torch', 'tensorflow', got 'jax'"):
        metrics.MetricsWriter(str(tmp_path), "jax")


def event_scalars(log_dir):
    """{(tag, step): value} of every scalar in the event files, read with TensorFlow's own reader."""
    import tensorflow as tf

    found = {}
    for path in tf.io.gfile.glob(f"{log_dir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = value.simple_value if value.HasField("simple_value") else float(tf.make_ndarray(value.tensor))
                found[value.tag, event.step] = number
    return found


RECORDS = [{"epoch": 0, "loss": 2.25, "test_accuracy": 0.5, "steps": 23},
           {"epoch": 1, "loss": 0.125, "test_accuracy": 0.875, "steps": 23}]

WRITE = """
import json, sys
from hvdkit.training import metrics
writer = metrics.MetricsWriter(sys.argv[1], sys.argv[2])
for record in json.loads(sys.argv[3]):
    writer.write(record)
writer.close()
print(sorted(m for m in ("torch", "tensorflow") if m in sys.modules))
"""


@pytest.mark.parametrize("framework, imported", [("tensorflow", "['tensorflow']"), ("torch", "['torch']")])
def test_each_framework_writes_the_jsonl_records_as_tensorboard_scalars_with_its_own_writer(
        tmp_path, framework, imported):
    result = subprocess.run([sys.executable, "-c", WRITE, str(tmp_path), framework, json.dumps(RECORDS)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == imported  # a TensorFlow job's writer needs no torch
    with open(tmp_path / "metrics.jsonl") as f:
        written = [json.loads(line) for line in f]
    assert [{k: v for k, v in r.items() if k != "time"} for r in written] == RECORDS
    scalars = event_scalars(tmp_path)
    expected = {(key, r["epoch"]): r[key] for r in RECORDS for key in ("loss", "test_accuracy", "steps")}
    assert scalars.keys() == expected.keys()
    assert all(scalars[key] == pytest.approx(value, rel=1e-6) for key, value in expected.items()), scalars
