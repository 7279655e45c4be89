"""``hvdkit train``: the main job trains for real on 2 ranks, reports what it
did, resumes from its checkpoints, and refuses bad flags before launching."""
import json

import pytest

DENSE_EPOCHS = 20


def read_metrics(log_dir):
    with open(log_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def train(hvdkit_cli, log_dir, *flags, timeout=300):
    result = hvdkit_cli(["train", "--log-dir", str(log_dir), *flags], timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, read_metrics(log_dir)


def final_accuracy(records, last=3):
    """Mean test accuracy of the last epochs: one test sample is 0.28 points,
    so a single epoch's number is too noisy to compare runs by."""
    return sum(r["test_accuracy"] for r in records[-last:]) / last


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    from conftest import run_hvdkit

    log_dir = tmp_path_factory.mktemp("dense")
    result, records = train(run_hvdkit, log_dir)
    return result, records


def test_default_run_reaches_95_percent_on_digits(dense_run):
    result, records = dense_run
    assert len(records) == DENSE_EPOCHS
    assert records[-1]["test_accuracy"] >= 0.95
    assert "2 ranks" in result.stdout and "final test accuracy" in result.stdout
    for key in ("epoch", "loss", "test_accuracy", "samples_per_sec", "bytes_per_step", "compression_ratio"):
        assert key in records[-1]
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["compression_ratio"] == pytest.approx(1.0)
    assert records[-1]["bytes_per_step"] > 0


# Local SGD end to end: the model averaged every 4 steps instead of the gradients every step. Each
# compressor's end-to-end training with its defaults is tests/integration/test_fidelity.py (one job,
# every spec scored against dense in that job); its arithmetic is checked exactly against the numpy
# oracle in tests/unit/exchange and tests/parallel/torch.
def test_local_sgd_converges_like_dense(hvdkit_cli, tmp_path, dense_run):
    _, dense = dense_run
    _, records = train(hvdkit_cli, tmp_path, "--average-every", "4")
    assert final_accuracy(records) >= final_accuracy(dense) - 0.01, (
        f"local SGD: {final_accuracy(records):.4f} vs dense {final_accuracy(dense):.4f}")


@pytest.mark.parametrize("flags, message", [
    (["--model", "vgg"], "--model: invalid choice"),
    (["--dataset", "imagenet"], "--dataset: invalid choice"),
    (["--batch-size", "5000"], "--batch-size 5000 is larger than a rank's shard"),
    (["-np", "4", "--ranks-per-node", "3"], "--ranks-per-node 3 does not divide -np 4"),
    (["--checkpoint", "/proc/hvdkit-nope"], "--checkpoint '/proc/hvdkit-nope' is not a writable directory"),
    (["--compression", "gzip"], "--compression: "),
])
def test_bad_flags_fail_before_launch_with_exit_2(hvdkit_cli, tmp_path, flags, message):
    result = hvdkit_cli(["train", "--log-dir", str(tmp_path), *flags], timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()
