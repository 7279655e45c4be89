"""``hvdkit train --framework tensorflow``: the Keras path trains for real on 2
ranks like one process with the global batch, writes the torch path's metrics,
resumes exactly where its checkpoint left off (error-feedback state included),
and runs post-local SGD."""
import pytest
from test_train import final_accuracy, train

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
    """topk keeps per-rank error-feedback residuals: the resumed epoch matches an uninterrupted run
    only if weights, momentum, step counters and every rank's residuals all came back."""
    flags = [*TF, "--compression", "topk:0.01"]
    _, straight = train(hvdkit_cli, tmp_path / "straight", *flags, "--epochs", "2")
    checkpoints, logs = tmp_path / "ckpt", tmp_path / "logs"
    train(hvdkit_cli, logs, *flags, "--epochs", "1", "--checkpoint", str(checkpoints))
    steps = -(-(DIGITS_TRAIN // 2) // 32)
    assert (checkpoints / "latest").read_text().split()[::2] == [  # named by step; one file per rank too
        f"ckpt-{steps:08d}.pt", f"ckpt-{steps:08d}.rank-00000.pt", f"ckpt-{steps:08d}.rank-00001.pt"]
    _, records = train(hvdkit_cli, logs, *flags, "--epochs", "2", "--checkpoint", str(checkpoints))
    assert [r["epoch"] for r in records] == [0, 1]  # the second run added epoch 1 only
    assert records[1]["loss"] == pytest.approx(straight[1]["loss"], rel=1e-5)
    assert records[1]["test_accuracy"] == pytest.approx(straight[1]["test_accuracy"], abs=1.5 / 359)
    assert records[1]["compression_ratio"] > 10


def test_post_local_sgd_is_synchronous_for_its_warmup_then_local_with_periodic_averaging(hvdkit_cli, tmp_path,
                                                                                         dense_run):
    """A warm-up of exactly one epoch: epoch 0 must be the dense run's epoch 0 (gradients averaged every
    step), epoch 1 must send no gradients, only the model every 4 local steps, and differ from dense."""
    _, dense, _ = dense_run
    steps = -(-(DIGITS_TRAIN // 2) // 32)
    result, records = train(hvdkit_cli, tmp_path, *TF, "--epochs", "2", "--average-every", "4",
                            "--average-warmup", str(steps))
    assert f"after {steps} synchronous steps" in result.stdout
    assert records[0]["loss"] == pytest.approx(dense[0]["loss"], rel=1e-6)
    assert records[0]["test_accuracy"] == dense[0]["test_accuracy"]
    assert records[0]["bytes_per_step"] == 4 * MLP_PARAMETERS
    averages = sum(1 for step in range(steps + 1, 2 * steps + 1) if (step - steps) % 4 == 0)
    assert records[1]["bytes_per_step"] == pytest.approx(4 * MLP_PARAMETERS * averages / steps)
    assert records[1]["compression_ratio"] == pytest.approx(steps / averages)
    assert records[1]["loss"] != pytest.approx(dense[1]["loss"], rel=1e-6)  # the ranks did step on their own
    assert records[1]["test_accuracy"] >= 0.9
    # Stopped at the switch and resumed: the rerun must come back in the local phase, on the same steps.
    part, checkpoints = tmp_path / "part", tmp_path / "ckpt"
    flags = [*TF, "--average-every", "4", "--average-warmup", str(steps), "--checkpoint", str(checkpoints)]
    train(hvdkit_cli, part, *flags, "--epochs", "1")
    _, resumed = train(hvdkit_cli, part, *flags, "--epochs", "2")
    assert [r["epoch"] for r in resumed] == [0, 1]
    assert resumed[1]["loss"] == pytest.approx(records[1]["loss"], rel=1e-5)
    assert resumed[1]["bytes_per_step"] == records[1]["bytes_per_step"]
