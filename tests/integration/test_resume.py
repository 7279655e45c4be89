"""Bit-identical resume: ``hvdkit train`` on 2 ranks, SIGKILLed after k steps and resumed, ends with
the same parameters, momentum, error-feedback residuals, PowerSGD factors, local-SGD state and RNG
states, to the last bit, as a run that was never stopped; and its epochs report the same losses.

Each job runs this file as its worker (``python test_resume.py worker PAUSE_AT MARKERS FLAGS...``):
the worker trains through ``torch_loop.train`` and, at global step PAUSE_AT, once the checkpoint
due there is saved, writes its pid and sleeps; the test then SIGKILLs every rank, as a crash would.
One thread per rank (``OMP_NUM_THREADS=1``): bit-identity needs the same intra-op thread count.
"""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.timeout(900)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 2  # digits on 2 ranks, 32 samples per rank per step: 23 steps per epoch, 46 in all
STEPS_PER_EPOCH = 23
ENV = {"OMP_NUM_THREADS": "1"}

# name: (flags, --checkpoint-every, [(pause at global step, step the next run resumes from), ...])
CASES = {
    # mid-epoch, and the epoch boundary, with a checkpoint every step (a kill before the first save leaves
    # nothing to resume from: tests/unit/state/test_checkpoint.py's clean_stale tests)
    "none": (["--compression", "none"], 1, [(11, 11), (23, 23)]),
    # error feedback in the synchronous warm-up, then per-rank parameters and momentum in local steps;
    # killed between checkpoints, so the steps after the last one are done again
    "topk-ef-post-local-sgd": (["--compression", "topk:0.1", "--average-every", "4", "--average-warmup", "30"], 3,
                               [(13, 12), (35, 33)]),
    # PowerSGD's warm-started Q factors and residuals, killed mid-epoch 1
    "powersgd": (["--compression", "powersgd:2"], 5, [(29, 25)]),
}


# ------------------------------------------------------------------ worker ---
def worker(pause_at, markers, flags):
    import argparse

    from hvdkit.training import config as train_config
    from hvdkit.training import torch_loop

    parser = argparse.ArgumentParser()
    train_config.add_arguments(parser)
    config = train_config.from_args(parser.parse_args(flags))

    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("HOROVOD_RANK", "0")))

    def after_step(global_step):
        if global_step != pause_at:
            # Stands in for dropout and augmentation: every RNG moves on at each step, by a different
            # amount on each rank, so the final RNG states match only if each rank got its own back.
            torch.rand(1 + rank), np.random.rand(1 + rank), [random.random() for _ in range(1 + rank)]
            return
        path = os.path.join(markers, f"rank{rank}.pid")
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
        while True:
            time.sleep(60)

    return torch_loop.train(config, after_step=after_step)


# ------------------------------------------------------------------ driver ---
def launch(workdir, flags, pause_at=-1):
    """Start the 2-rank job; returns (Popen, markers directory, output file)."""
    markers = workdir / f"markers-{pause_at}"
    markers.mkdir()
    output = open(workdir / f"output-{pause_at}.txt", "w+")
    command = [sys.executable, "-m", "hvdkit", "run", "-np", "2", "--mpi", "--",
               sys.executable, os.path.abspath(__file__), "worker", str(pause_at), str(markers), *flags]
    proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, **ENV}, stdout=output, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, markers, output


def read_output(output):
    output.flush()
    output.seek(0)
    return output.read()


def stop(proc):
    """Test failure path: end the job (hvdkit run passes SIGTERM to the launcher's group)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_to_end(workdir, flags):
    proc, _, output = launch(workdir, flags)
    try:
        proc.wait(timeout=400)
    finally:
        stop(proc)
    text = read_output(output)
    assert proc.returncode == 0, text[-4000:]
    return text


def run_and_kill(workdir, flags, pause_at):
    """Run until both ranks pause at ``pause_at``, SIGKILL them, and check the job ended."""
    proc, markers, output = launch(workdir, flags, pause_at)
    try:
        deadline = time.monotonic() + 400
        while len(list(markers.glob("rank*.pid"))) < 2:
            assert proc.poll() is None, f"the job ended before step {pause_at}:\n{read_output(output)[-4000:]}"
            assert time.monotonic() < deadline, f"no pause at step {pause_at}:\n{read_output(output)[-4000:]}"
            time.sleep(0.2)
        pids = [int(path.read_text()) for path in markers.glob("rank*.pid")]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=90)
    finally:
        stop(proc)
    assert proc.returncode != 0
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in pids), "a killed rank is still running"
    return read_output(output)


# ------------------------------------------------------------- comparison ---
def final_state(directory):
    """{file role: payload} of the newest checkpoint, each file's checksum checked."""
    from hvdkit.state import checkpoint

    entries = checkpoint.read_pointer(directory)
    assert entries is not None, f"no checkpoint in {directory}"
    state = {}
    for name, digest in entries:
        role = name.split(".", 1)[1]  # "pt" (shared) or "rank-0000R.pt"
        data = (directory / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
        payload = torch.load(directory / name, weights_only=False)
        payload.pop("config", None)  # holds the directories, which differ between the runs
        state[role] = payload
    return state


def differences(a, b, where="state"):
    """Where ``a`` and ``b`` differ, comparing tensors and arrays bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
                and a.reshape(-1).view(torch.uint8).equal(b.reshape(-1).view(torch.uint8)))
        return [] if same else [where]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        same = type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))} in only one"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}[{key!r}]")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return [where]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def epoch_losses(log_dir):
    with open(log_dir / "metrics.jsonl") as f:
        return [(r["epoch"], r["loss"], r["test_accuracy"], r["steps"]) for r in map(json.loads, f)]


@pytest.mark.parametrize("case", list(CASES))
def test_killed_and_resumed_run_ends_bit_identical(tmp_path, case):
    flags, every, kills = CASES[case]
    common = ["--epochs", str(EPOCHS), *flags]
    (tmp_path / "straight").mkdir()  # the reference saves at epoch ends only
    run_to_end(tmp_path / "straight",
               common + ["--checkpoint", str(tmp_path / "ref"), "--log-dir", str(tmp_path / "ref-logs")])

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    own = common + ["--checkpoint-every", str(every), "--checkpoint", str(tmp_path / "ckpt"),
                    "--log-dir", str(tmp_path / "logs")]
    expected_start = None
    for pause_at, resumes_from in kills:
        text = run_and_kill(resumed, own, pause_at)
        assert (f"at step {expected_start} " in text) if expected_start else ("resuming" not in text), text[-3000:]
        expected_start = resumes_from
    text = run_to_end(resumed, own)
    assert f"at step {expected_start} " in text, text[-3000:]

    assert not list((tmp_path / "ckpt").glob(".tmp-*"))
    reference, final = final_state(tmp_path / "ref"), final_state(tmp_path / "ckpt")
    assert final["pt"]["position"] == {"epoch": EPOCHS, "step": 0, "global_step": EPOCHS * STEPS_PER_EPOCH}
    assert set(final) == {"pt", "rank-00000.pt", "rank-00001.pt"}
    from hvdkit.state import checkpoint

    names = [name for name, _ in checkpoint.read_pointer(tmp_path / "ckpt")]  # named by the global step
    assert names == [f"ckpt-{EPOCHS * STEPS_PER_EPOCH:08d}.{role}" for role in ("pt", "rank-00000.pt", "rank-00001.pt")]
    assert differences(reference, final) == []
    assert epoch_losses(tmp_path / "ref-logs") == epoch_losses(tmp_path / "logs")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    sys.exit(worker(int(sys.argv[2]), sys.argv[3], sys.argv[4:]))
