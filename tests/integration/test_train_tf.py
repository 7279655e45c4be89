"""``hvdkit train --framework tensorflow``: the Keras path trains for real on 2
ranks like one process with the global batch, writes the torch path's metrics
(TensorBoard events through ``tf.summary``), resumes exactly where its
``tf.train.Checkpoint`` files left off (error-feedback state included), runs
post-local SGD, and never imports torch in any rank."""
import hashlib
import shutil
import sys
import textwrap

import pytest
from test_train import final_accuracy, read_metrics, train

TF = ["--framework", "tensorflow"]
DENSE_EPOCHS = 20
MLP_PARAMETERS = 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10  # tf_models.mlp on 8x8 digits
DIGITS_TRAIN = 1438


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    from conftest import run_hvdkit

    log_dir = tmp_path_factory.mktemp("tf-dense")
    result, records = train(run_hvdkit, log_dir, *TF)
    return result, records, log_dir


def test_default_run_reaches_96_percent_and_logs_what_torch_logs(dense_run):
    result, records, log_dir = dense_run
    assert [r["epoch"] for r in records] == list(range(DENSE_EPOCHS))
    assert final_accuracy(records) >= 0.96, [r["test_accuracy"] for r in records]
    assert "mlp on digits" in result.stdout and "2 ranks" in result.stdout
    assert "final test accuracy" in result.stdout
    last = records[-1]
    for key in ("epoch", "loss", "test_accuracy", "samples_per_sec", "samples_per_sec_per_rank", "bytes_per_step",
                "compression_ratio", "world_size", "steps"):
        assert key in last
    assert last["loss"] < records[0]["loss"] / 10
    assert last["world_size"] == 2 and last["steps"] == -(-(DIGITS_TRAIN // 2) // 32)
    assert last["bytes_per_step"] == 4 * MLP_PARAMETERS  # every fp32 gradient, once per step
    assert last["compression_ratio"] == pytest.approx(1.0)
    assert last["samples_per_sec"] > 0
    events = list(log_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1
    data = events[0].read_bytes()
    assert all(tag in data for tag in (b"loss", b"test_accuracy", b"samples_per_sec", b"bytes_per_step"))


def test_two_ranks_train_like_one_process_with_the_global_batch(hvdkit_cli, tmp_path, dense_run):
    """Each step's two shards of 32 are one batch of 64 of the same permutation, so averaged
    gradients make the same updates as one process (up to float summation order)."""
    _, dense, _ = dense_run
    _, single = train(hvdkit_cli, tmp_path, *TF, "-np", "1", "--batch-size", "64", "--epochs", "2")
    for one, two in zip(single, dense[:2]):
        assert one["world_size"] == 1 and one["steps"] == two["steps"]
        assert one["loss"] == pytest.approx(two["loss"], rel=1e-4)
        assert abs(one["test_accuracy"] - two["test_accuracy"]) <= 1.5 / 359  # at most one test sample


def test_resume_continues_exactly_after_the_last_checkpoint(hvdkit_cli, tmp_path):
    """topk keeps per-rank error-feedback residuals: resumed from the uninterrupted run's epoch-1 save, the
    second epoch matches that run's, and ends with its state bit for bit, only if weights, momentum, step
    counters and every rank's residuals all came back."""
    flags = [*TF, "--compression", "topk:0.01"]
    _, straight = train(hvdkit_cli, tmp_path / "straight", *flags, "--epochs", "2",
                        "--checkpoint", str(tmp_path / "straight-ckpt"))
    steps = -(-(DIGITS_TRAIN // 2) // 32)
    assert (tmp_path / "straight-ckpt" / "latest").read_text().split()[::2] == [  # named by step; one file per rank
        f"ckpt-{2 * steps:08d}.{role}" for role in ROLES]
    checkpoints = first_epochs_save(tmp_path / "straight-ckpt", tmp_path / "ckpt", steps)
    _, records = train(hvdkit_cli, tmp_path / "logs", *flags, "--epochs", "2", "--checkpoint", str(checkpoints))
    assert [r["epoch"] for r in records] == [1]  # the resumed run trained epoch 1 only
    assert records[0]["loss"] == pytest.approx(straight[1]["loss"], rel=1e-5)
    assert records[0]["test_accuracy"] == pytest.approx(straight[1]["test_accuracy"], abs=1.5 / 359)
    assert records[0]["compression_ratio"] > 10
    reference, resumed = final_state(tmp_path / "straight-ckpt"), final_state(checkpoints)
    assert resumed.keys() == {"tfckpt", "rank-00000.tfckpt", "rank-00001.tfckpt"}
    assert resumed["tfckpt"]["position"] == {"epoch": 2, "step": 0, "global_step": 2 * steps}
    for rank in (0, 1):  # the compressed buckets' residuals (tensors under 1024 elements travel dense)
        buckets = resumed[f"rank-0000{rank}.tfckpt"]["exchange"]["buckets"].values()
        assert any(bucket["residual"] is not None for bucket in buckets)
    assert resumed == reference  # weights, momentum, step counters, every rank's residuals: bit for bit


ROLES = ("tfckpt", "rank-00000.tfckpt", "rank-00001.tfckpt")  # a TensorFlow save's files: shared, then per rank


def first_epochs_save(saved, directory, steps):
    """``directory`` holding the save of step ``steps`` (the end of epoch 0) from ``saved`` (a run that went on,
    keeping its two newest saves), named by a ``latest`` of its own: where a run stopped after epoch 0 would
    have left it, for a second run to resume from."""
    directory.mkdir()
    pointer = ""
    for name in (f"ckpt-{steps:08d}.{role}" for role in ROLES):
        shutil.copy(saved / name, directory / name)
        pointer += f"{name} {hashlib.sha256((directory / name).read_bytes()).hexdigest()}\n"
    (directory / "latest").write_text(pointer)
    return directory


def final_state(directory):
    """{file role: payload} of the newest save, read with the TensorFlow codec, each tensor as
    (dtype, shape, bytes); without the configuration, which names the run's directories."""
    from hvdkit.state import checkpoint
    from hvdkit.state.tf_codec import CODEC

    def bits(value):
        if isinstance(value, dict):
            return {key: bits(item) for key, item in value.items() if key != "config"}
        if isinstance(value, (list, tuple)):
            return [bits(item) for item in value]
        if hasattr(value, "numpy"):
            array = value.numpy()
            return array.dtype.str, array.shape, array.tobytes()
        return value

    return {name.split(".", 1)[1]: bits(CODEC.loads((directory / name).read_bytes()))
            for name, _ in checkpoint.read_pointer(directory)}


def test_post_local_sgd_warms_up_synchronously_then_steps_locally_and_resumes_without_torch(hvdkit_cli, tmp_path,
                                                                                         dense_run):
    """A warm-up of exactly one epoch: epoch 0 must be the dense run's epoch 0 (gradients averaged every
    step), epoch 1 must send no gradients, only the model every 4 local steps, and differ from dense."""
    _, dense, _ = dense_run
    steps = -(-(DIGITS_TRAIN // 2) // 32)
    flags = ["--average-every", "4", "--average-warmup", str(steps)]
    # in rank processes that must end with no torch module loaded
    result = train_in_checked_ranks(hvdkit_cli, tmp_path / "straight", *flags, "--epochs", "2",
                                    "--checkpoint", str(tmp_path / "straight-ckpt"))
    records = read_metrics(tmp_path / "straight")
    assert f"after {steps} synchronous steps" in result.stdout
    assert records[0]["loss"] == pytest.approx(dense[0]["loss"], rel=1e-6)
    assert records[0]["test_accuracy"] == dense[0]["test_accuracy"]
    assert records[0]["bytes_per_step"] == 4 * MLP_PARAMETERS
    averages = sum(1 for step in range(steps + 1, 2 * steps + 1) if (step - steps) % 4 == 0)
    assert records[1]["bytes_per_step"] == pytest.approx(4 * MLP_PARAMETERS * averages / steps)
    assert records[1]["compression_ratio"] == pytest.approx(steps / averages)
    assert records[1]["loss"] != pytest.approx(dense[1]["loss"], rel=1e-6)  # the ranks did step on their own
    assert records[1]["test_accuracy"] >= 0.9
    assert_events_hold_the_records(tmp_path / "straight", records)
    # Resumed from the save at the switch: the rerun comes back in the local phase, on the same steps.
    checkpoints = first_epochs_save(tmp_path / "straight-ckpt", tmp_path / "ckpt", steps)
    second = train_in_checked_ranks(hvdkit_cli, tmp_path / "part", *flags, "--epochs", "2",
                                    "--checkpoint", str(checkpoints))
    assert f"resuming from {checkpoints} at step {steps} " in second.stdout
    assert (checkpoints / "latest").read_text().split()[0] == f"ckpt-{2 * steps:08d}.tfckpt"
    resumed = read_metrics(tmp_path / "part")
    assert [r["epoch"] for r in resumed] == [1]
    assert resumed[0]["loss"] == pytest.approx(records[1]["loss"], rel=1e-5)
    assert resumed[0]["bytes_per_step"] == records[1]["bytes_per_step"]
    assert_events_hold_the_records(tmp_path / "part", resumed)


# Each rank runs the train entry point itself, then reports what its own process imported.
TRAIN_THEN_CHECK = textwrap.dedent("""
    import os, sys
    from hvdkit.cli import main
    code = main.main(["train", *sys.argv[1:]])
    rank = os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("HOROVOD_RANK"))
    imported = sorted(name for name in sys.modules if name == "torch" or name.startswith("torch."))
    if code != 0 or imported:
        sys.exit(f"rank {rank}: exit code {code}, torch modules imported: {imported[:5]}")
    print(f"rank {rank}: trained with tensorflow={'tensorflow' in sys.modules}, without torch", flush=True)
""")


def train_in_checked_ranks(hvdkit_cli, log_dir, *flags):
    result = hvdkit_cli(["run", "-np", "2", "--", sys.executable, "-c", TRAIN_THEN_CHECK, *TF,
                         "--log-dir", str(log_dir), *flags], timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: trained with tensorflow=True, without torch" in result.stdout, result.stdout[-3000:]
    return result


def event_scalars(log_dir):
    """{(tag, epoch): value} of every scalar in the run's event files, read with TensorFlow's own reader."""
    import tensorflow as tf

    found = {}
    for path in log_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found[value.tag, event.step] = float(tf.make_ndarray(value.tensor))
    return found


def assert_events_hold_the_records(log_dir, records):
    scalars = event_scalars(log_dir)
    expected = {(key, r["epoch"]): r[key] for r in records for key in r
                if key not in ("epoch", "time") and isinstance(r[key], (int, float))}
    assert {"loss", "test_accuracy", "bytes_per_step", "compression_ratio"} <= {tag for tag, _ in expected}
    assert scalars.keys() == expected.keys()
    for key, value in expected.items():
        assert scalars[key] == pytest.approx(value, rel=1e-6), key
    assert all(scalars["loss", r["epoch"]] > 0 for r in records)
