"""``hvdkit train --framework tensorflow``: the Keras path trains for real on 2
ranks like one process with the global batch, writes the torch path's metrics,
resumes exactly where its checkpoint left off (error-feedback state included),
and refuses what it cannot do before launching."""
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


@pytest.mark.parametrize("flags, message", [
    (["--average-every", "4", "--average-warmup", "8"],
     "--average-warmup 8: post-local SGD is not available with --framework tensorflow"),
])
def test_tensorflow_flag_it_cannot_honour_fails_before_launch_with_exit_2(hvdkit_cli, tmp_path, flags, message):
    result = hvdkit_cli(["train", *TF, "--log-dir", str(tmp_path), *flags], timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()
