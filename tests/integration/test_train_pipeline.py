"""``hvdkit train --pipeline-stages``: one small pipelined run end to end, the flags it refuses before
launching, and a killed stage rank ending the job with the rank and its stage named.

The pipeline's arithmetic (every schedule and layout equal to single-process training) is
tests/parallel/torch/test_pipeline.py; here the command line and the job around it.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO

pytestmark = pytest.mark.timeout(360)
KILL_END_LIMIT = 60  # seconds from the SIGKILL to the launcher's exit


def test_two_stage_pipeline_trains_digits_and_its_checkpoint_refuses_another_cut(hvdkit_cli, tmp_path):
    checkpoint = str(tmp_path / "ckpt")
    result = hvdkit_cli(["train", "-np", "2", "--pipeline-stages", "2", "--microbatches", "4", "--schedule", "gpipe",
                         "--epochs", "1", "--log-dir", str(tmp_path), "--checkpoint", checkpoint], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 replica(s) of a 2-stage pipeline (gpipe, 4 micro-batches of 8)" in result.stdout
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [0]
    assert records[0]["loss"] < 2.25  # ln(10) = 2.30: an untrained model's loss on 10 classes
    assert records[0]["test_accuracy"] >= 0.5  # chance is 0.1; one epoch reaches ~0.7 here
    assert records[-1]["samples_per_sec"] > 0
    # each rank saved its own stage: a resume that cuts the model otherwise must say so, not load the wrong layers
    # (another number of chunks per rank is refused alike: tests/unit/training/test_checkpoint_state.py)
    resumed = hvdkit_cli(["train", "-np", "2", "--epochs", "2", "--log-dir", str(tmp_path / "again"),
                          "--checkpoint", checkpoint, "--pipeline-stages", "1"], timeout=300)
    assert resumed.returncode != 0, resumed.stdout[-2000:]
    assert "saved with --pipeline-stages 2, this run has --pipeline-stages 1" in resumed.stderr, resumed.stderr[-3000:]
    assert "epoch 1" not in resumed.stdout, "the refused run trained on"


@pytest.mark.parametrize("flags,message", [
    (["--framework", "tensorflow", "--pipeline-stages", "2"], "Keras 3 has no pipeline engine"),
    (["-np", "3", "--pipeline-stages", "2"], "--pipeline-stages 2 does not divide -np 3"),
    (["--pipeline-stages", "2", "--batch-size", "30", "--microbatches", "4"], "does not split into --microbatches 4"),
    (["--pipeline-stages", "2", "--microbatches", "1"], "--schedule 1f1b needs --microbatches >= --pipeline-stages"),
    (["-np", "4", "--pipeline-stages", "2", "--hierarchical", "--ranks-per-node", "2"],
     "--hierarchical with --pipeline-stages"),
    (["--pipeline-stages", "2", "--average-every", "4"], "--average-every with --pipeline-stages"),
    (["--pipeline-stages", "2", "--schedule", "zerobubble"], "invalid choice: 'zerobubble'"),
    (["--pipeline-stages", "2", "--schedule", "zero-bubble", "--microbatches", "5", "--batch-size", "40"],
     "--schedule zero-bubble runs --microbatches in rounds of about 2: 5 is not a multiple of 2"),
])
def test_bad_pipeline_flags_stop_before_launch(hvdkit_cli, tmp_path, flags, message):
    started = time.monotonic()
    result = hvdkit_cli(["train", "--log-dir", str(tmp_path), *flags], timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr
    assert "hvdkit train:" not in result.stdout, "a rank started"
    assert time.monotonic() - started < 60


# Two stages train in a loop; each rank writes its pid once it has taken a step.
PROGRAM = textwrap.dedent("""
    import os
    import torch
    from torch import nn
    import hvdkit.torch.pipeline as pp

    torch.manual_seed(0)
    pipe = pp.build(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)),
                    lambda params: torch.optim.SGD(params, lr=0.01), stages=2, microbatches=2, schedule="1f1b")
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    pipe.step(x, y)
    path = os.path.join(os.environ["READY_DIR"], f"rank{pipe.layout.rank}")
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    while True:
        pipe.step(x, y)
""")


def test_a_killed_stage_rank_ends_the_job_naming_its_stage(tmp_path):
    script = tmp_path / "pipeline_loop.py"
    script.write_text(PROGRAM)
    ready = tmp_path / "ready"
    ready.mkdir()
    env = dict(os.environ, READY_DIR=str(ready), PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(tmp_path / "stderr", "w") as err:
        job = subprocess.Popen([sys.executable, "-m", "hvdkit", "run", "-np", "2", "--", sys.executable, str(script)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not all((ready / f"rank{r}").exists() for r in range(2)):
            assert job.poll() is None, f"the job ended early:\n{(tmp_path / 'stderr').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the ranks did not start within 180 s"
            time.sleep(0.2)
        os.kill(int((ready / "rank1").read_text()), signal.SIGKILL)
        killed = time.monotonic()
        job.wait(timeout=KILL_END_LIMIT)
        assert time.monotonic() - killed < KILL_END_LIMIT
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)  # the session this test started: its launcher and ranks
            job.wait()
    stderr = (tmp_path / "stderr").read_text()
    assert job.returncode != 0
    print(stderr[-1500:])
    assert "hvdkit run: rank 1 (pipeline stage 1 of 2, replica 0 of 1) killed by SIGKILL" in stderr, stderr[-3000:]
