"""Elastic training: a worker killed mid-epoch, the job rolls back to its last commit and finishes on fewer.

The job runs under ``horovodrun --gloo -np 3 --min-np 2 --max-np 3`` with a host-discovery script
reading a file: ``localhost:2`` and ``127.0.0.1:1`` act as two hosts on this machine. The test
SIGKILLs the worker on 127.0.0.1 (Horovod drops a failed worker's whole host, so that is the one
whose loss leaves ``--min-np`` slots) and removes that host from the file. The survivors must roll
back to the last commit, go on as 2 ranks, finish every epoch, agree bit for bit, and match a
single process that replays the same schedule (3 shards up to the commit, 2 after). This file is
also the workers' program (``python test_elastic.py worker ...``).
"""
import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 2
BATCH = 32
COMMIT_EVERY = 5
STEP_DELAY = 0.1  # seconds each worker sleeps after a step, so the kill lands mid-epoch
KILL_AT_STEP = 17  # in epoch 1 (15 steps per epoch on 3 ranks), at the first step that is not a commit
JOB_TIMEOUT = 300  # the machine is shared and slow: a run takes 30-90 s


# --- the workers' side ----------------------------------------------------------------------------
def worker(out_dir, *train_flags):
    """Train with hvdkit's elastic loop; log every step to progress.PID, the end to final.PID.pt."""
    import torch

    from hvdkit.training import config as train_config
    from hvdkit.training import elastic_loop

    parser = argparse.ArgumentParser()
    train_config.add_arguments(parser)
    config = train_config.from_args(parser.parse_args(list(train_flags)))
    pid = os.getpid()
    progress = open(os.path.join(out_dir, f"progress.{pid}"), "a", buffering=1)

    def after_step(state):
        progress.write(json.dumps({"time": time.time(), "host": os.environ["HOROVOD_HOSTNAME"], "pid": pid,
                                   "rank": state.topology.rank, "size": state.topology.size,
                                   "step": state.global_step, "epoch": state.epoch}) + "\n")
        time.sleep(STEP_DELAY)

    state = elastic_loop.train(config, COMMIT_EVERY, after_step)
    torch.save({"parameters": state.model.state_dict(), "rank": state.topology.rank, "size": state.topology.size,
                "epoch": state.epoch, "step": state.global_step, "resets": state.resets},
               os.path.join(out_dir, f"final.{pid}.pt"))


# --- helpers -------------------------------------------------------------------------------------
def environment():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def discovery(tmp_path, hosts):
    """A discovery script printing the lines of a file the test rewrites."""
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("".join(f"{h}\n" for h in hosts))
    script = tmp_path / "discover.sh"
    script.write_text(f"#!/bin/sh\ncat {hosts_file}\n")
    script.chmod(0o755)
    return script, hosts_file


def processes_with(marker):
    """PIDs (other than this one) whose command line mentions ``marker``."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        pid = int(path.split("/")[2])
        if marker in cmdline and pid != os.getpid():
            found.append(pid)
    return found


def assert_nothing_left(marker):
    """Every process of the job has ended; any straggler is killed (it is ours) and fails the test."""
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes_with(marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes of the job still running after it ended: {left}"


def finish(proc, marker, timeout):
    """Wait for the launcher under ``timeout``; on a hang kill the job and fail."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the elastic job did not finish within {timeout} s")


def read_progress(out_dir):
    """{pid: [progress records]}"""
    runs = {}
    for path in glob.glob(os.path.join(out_dir, "progress.*")):
        with open(path) as f:
            runs[int(path.rsplit(".", 1)[1])] = [json.loads(line) for line in f if line.endswith("\n")]
    return runs


def reference(switch_step, sizes, epochs, seed=0, lr=0.05, momentum=0.9):
    """One process replaying the elastic loop: the gradient of each step is the mean of every rank's
    batch gradient; the world goes from sizes[0] to sizes[1] ranks after global step ``switch_step``,
    resuming the epoch at ``samples // (BATCH * new size)`` batches. Returns (parameters, steps)."""
    import torch
    import torch.nn.functional as F

    from hvdkit.data import sharding
    from hvdkit.training import data, torch_models, torch_state

    torch.set_num_threads(1)  # tiny ops: threads only add synchronisation on a busy machine
    torch_state.seed_everything(seed)
    dataset = data.load("digits", seed)
    x, y = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)
    model = torch_models.build("mlp", dataset.input_shape, dataset.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    epoch = samples = step = 0
    size = sizes[0]
    while epoch < epochs:
        steps = -(-sharding.shard_size(len(y), 0, size, "pad") // BATCH)
        first = min(samples // (BATCH * size), steps)
        shards = [sharding.shard_indices(len(y), r, size, epoch=epoch, seed=seed, remainder="pad",
                                         start=first * BATCH) for r in range(size)]
        for k in range(steps - first):
            if size == sizes[0] and step == switch_step:
                break
            grads = []
            for shard in shards:
                batch = shard[k * BATCH:(k + 1) * BATCH]
                model.zero_grad()
                F.cross_entropy(model(x[batch]), y[batch]).backward()
                grads.append([p.grad.clone() for p in model.parameters()])
            for i, p in enumerate(model.parameters()):
                p.grad = sum(g[i] for g in grads) / size
            optimizer.step()
            step, samples = step + 1, (first + k + 1) * BATCH * size
        else:
            epoch, samples = epoch + 1, 0
        if size == sizes[0] and step == switch_step:
            size = sizes[1]
    return model.state_dict(), step


def run_and_kill_one(tmp_path, worker_cmd, env, timeout, ready):
    """Run ``worker_cmd`` elastically on two hosts (``localhost:2`` and ``127.0.0.1:1``, from a discovery
    script) under ``horovodrun --gloo -np 3 --min-np 2``; once the worker on 127.0.0.1 writes a progress record
    for which ``ready(record)`` holds, SIGKILL it and drop its host. Asserts the job ends well and leaves no
    process behind; returns (the killed pid, when, the job's output). Progress goes to ``tmp_path / "out"``."""
    script, hosts_file = discovery(tmp_path, ["localhost:2", "127.0.0.1:1"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cmd = ["horovodrun", "--gloo", "-np", "3", "--min-np", "2", "--max-np", "3", "--host-discovery-script",
           str(script), *worker_cmd]
    with open(tmp_path / "job.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        victim = None
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            for pid, records in read_progress(out_dir).items():
                last = records[-1] if records else None
                if last and last["host"] == "127.0.0.1" and ready(last):
                    victim = pid
            time.sleep(0.05)
        assert victim is not None, "the worker on 127.0.0.1 never got to the kill point:\n%s" % (
            (tmp_path / "job.log").read_text()[-3000:])
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        hosts_file.write_text("localhost:2\n")  # the host is gone for good
        finish(proc, str(tmp_path), max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            finish(proc, str(tmp_path), 1)
    output = (tmp_path / "job.log").read_text()
    assert proc.returncode == 0, output[-5000:]
    assert_nothing_left(str(tmp_path))
    return victim, killed_at, output


# --- the tests -----------------------------------------------------------------------------------
def test_killed_worker_rolls_back_to_the_commit_and_training_finishes_on_two(tmp_path):
    import torch

    out_dir = tmp_path / "out"
    worker_cmd = [sys.executable, os.path.abspath(__file__), "worker", str(out_dir), "--epochs", str(EPOCHS),
                  "--batch-size", str(BATCH), "--log-dir", str(out_dir / "logs")]
    victim, killed_at, output = run_and_kill_one(
        tmp_path, worker_cmd, environment(), JOB_TIMEOUT,
        lambda last: last["step"] >= KILL_AT_STEP and last["step"] % COMMIT_EVERY)
    progress = read_progress(out_dir)
    survivors = [pid for pid in progress if pid != victim]
    assert len(survivors) == 2
    before = {pid: [r for r in progress[pid] if r["size"] == 3] for pid in survivors}
    after = {pid: [r for r in progress[pid] if r["size"] == 2] for pid in survivors}
    # Rolled back: the first step on 2 ranks follows the last commit, which is where the new rank 0
    # last committed (every COMMIT_EVERY steps and at epoch ends) before the failure.
    new_root = next(pid for pid in survivors if after[pid][0]["rank"] == 0)
    reached = before[new_root][-1]["step"]
    steps_on_3 = 15  # ceil(ceil(1438 / 3) / 32) steps per epoch
    commits = [s for s in range(reached + 1) if s % COMMIT_EVERY == 0 or s % steps_on_3 == 0]
    resumed = {after[pid][0]["step"] - 1 for pid in survivors}
    assert resumed == {commits[-1]}, (resumed, commits[-1], reached)
    assert commits[-1] < reached, "the kill was meant to land between commits"
    resumed_at = min(after[pid][0]["time"] for pid in survivors)
    print(f"\nworker killed at step {reached}; resumed on 2 ranks from the commit at step {commits[-1]}; "
          f"kill -> first step on 2 ranks: {resumed_at - killed_at:.2f} s", flush=True)
    assert f"resuming from the commit at step {commits[-1]}" in output

    finals = [torch.load(path) for path in glob.glob(str(out_dir / "final.*.pt"))]
    assert len(finals) == 2 and {f["size"] for f in finals} == {2} and {f["rank"] for f in finals} == {0, 1}
    expected, total_steps = reference(commits[-1], (3, 2), EPOCHS)
    for final in finals:
        assert final["epoch"] == EPOCHS and final["step"] == total_steps
        assert [(old, new) for _, old, new in final["resets"]] == [(3, 2)]
        for name, value in expected.items():
            assert torch.equal(final["parameters"][name], finals[0]["parameters"][name]), name
            torch.testing.assert_close(final["parameters"][name], value, rtol=0, atol=1e-4)
    with open(out_dir / "logs" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == list(range(EPOCHS))
    assert records[0]["world_size"] == 3 and records[-1]["world_size"] == 2
    assert "final model identical on all 2 ranks" in output


def test_reference_tells_a_wrong_rollback_apart():
    """The reference check above would catch a rollback one step off: the parameters move by far
    more than its tolerance."""
    import torch

    right, _ = reference(8, (3, 2), 1)
    for wrong_switch in (7, 9):
        wrong, _ = reference(wrong_switch, (3, 2), 1)
        assert max((wrong[k] - right[k]).abs().max().item() for k in right) > 1e-3


# --- hvdkit train --elastic: flags, launch command, settings, sampler position ----------------------
def elastic_args(*flags):
    from hvdkit.training import config as train_config
    from hvdkit.training import elastic_loop

    parser = argparse.ArgumentParser()
    train_config.add_arguments(parser)
    elastic_loop.add_arguments(parser)
    args = parser.parse_args(["--elastic", *flags])
    return train_config.from_args(args), elastic_loop.options_from_args(args)


@pytest.fixture
def script(tmp_path):
    return str(discovery(tmp_path, ["localhost:2", "127.0.0.1:1"])[0])


@pytest.mark.parametrize("flags, named", [
    (["-np", "3", "--min-np", "4"], "--min-np"),
    (["-np", "3", "--max-np", "2"], "--max-np"),
    (["--min-np", "0"], "--min-np"),
    (["--commit-every", "0"], "--commit-every"),
    (["--mpi"], "--mpi"),
    (["--hierarchical"], "--hierarchical"),
    (["--ranks-per-node", "1"], "--ranks-per-node"),
    (["--average-every", "4"], "--average-every"),
    (["--checkpoint", "ckpt"], "--checkpoint"),
    (["--framework", "tensorflow"], "--framework"),
])
def test_flags_that_cannot_go_with_elastic_are_named(script, flags, named):
    from hvdkit.errors import UsageError
    from hvdkit.training import elastic_loop

    config, options = elastic_args("--host-discovery-script", script, *flags)
    with pytest.raises(UsageError, match=named):
        elastic_loop.validate(config, options)


def test_discovery_script_must_be_an_executable_file(tmp_path):
    from hvdkit.errors import UsageError
    from hvdkit.training import elastic_loop

    with pytest.raises(UsageError, match="needs --host-discovery-script"):
        elastic_loop.validate(*elastic_args())
    plain = tmp_path / "hosts.txt"
    plain.write_text("localhost:2\n")
    with pytest.raises(UsageError, match="hosts.txt.* is not an executable file"):
        elastic_loop.validate(*elastic_args("--host-discovery-script", str(plain)))


def test_launch_command_is_horovodrun_elastic_running_hvdkit_train(script):
    from hvdkit.training import elastic_loop

    config, options = elastic_args("-np", "3", "--min-np", "2", "--host-discovery-script", script,
                                   "--compression", "topk:0.1", "--commit-every", "7")
    elastic_loop.validate(config, options)
    cmd = elastic_loop.horovodrun_command("/bin/horovodrun", config, options,
                                          elastic_loop.worker_argv(config, options))
    assert cmd[:10] == ["/bin/horovodrun", "--gloo", "-np", "3", "--min-np", "2", "--max-np", "3",
                        "--host-discovery-script", script]
    worker_cmd = cmd[10:]
    assert worker_cmd[:4] == [sys.executable, "-m", "hvdkit", "train"]
    assert worker_cmd[-3:] == ["--elastic", "--commit-every", "7"]
    assert worker_cmd[worker_cmd.index("--compression") + 1] == "topk:0.1"


def test_settings_fix_at_most_one_of_cycle_time_and_fusion_threshold():
    from hvdkit.torch import elastic

    env = {}
    applied = elastic.prepare_environment(env)
    assert env["HOROVOD_CYCLE_TIME"] == applied["HOROVOD_CYCLE_TIME"]
    assert "HOROVOD_FUSION_THRESHOLD" not in env and env["HOROVOD_GLOO_TIMEOUT_SECONDS"] == "10"
    env = {"HOROVOD_FUSION_THRESHOLD": "1048576"}
    elastic.prepare_environment(env)
    assert "HOROVOD_CYCLE_TIME" not in env
    with pytest.raises(ValueError, match="HOROVOD_CYCLE_TIME.*HOROVOD_FUSION_THRESHOLD.*segfault"):
        elastic.prepare_environment({"HOROVOD_CYCLE_TIME": "1", "HOROVOD_FUSION_THRESHOLD": "1048576"})
    with pytest.raises(ValueError, match="HOROVOD_GLOO_TIMEOUT_SECONDS='5s'"):
        elastic.prepare_environment({"HOROVOD_GLOO_TIMEOUT_SECONDS": "5s"})


@pytest.mark.parametrize("n, old, new, taken", [(103, 3, 2, 5), (103, 2, 3, 7), (100, 4, 4, 9), (10, 3, 2, 4)])
def test_sampler_resumes_on_a_new_world_without_skipping(n, old, new, taken):
    """Whatever the old ranks consumed plus what the new ranks read covers the epoch; fewer than
    ``new`` samples are read twice, besides the padding that makes the epoch divide evenly."""
    from hvdkit.torch import elastic
    from hvdkit.data import sharding
    from hvdkit.data.torch_sampler import ShardedSampler

    dataset = range(n)
    consumed, position = [], None
    for rank in range(old):
        sampler = ShardedSampler(dataset, num_replicas=old, rank=rank, seed=3)
        sampler.set_epoch(2)
        iterator = iter(sampler)
        consumed += [next(iterator) for _ in range(min(taken, sampler.num_samples))]
        position = elastic.sampler_position(sampler)
    rest = []
    for rank in range(new):
        sampler = ShardedSampler(dataset, num_replicas=new, rank=rank, seed=3)
        elastic.load_sampler_position(sampler, position)
        rest += list(sampler)
    assert sampler.epoch == 2
    assert set(consumed) | set(rest) == set(range(n))
    padding = sharding.shard_capacity(n, new) * new - n
    assert len(set(consumed) & set(rest)) < new + padding


def test_cli_refuses_elastic_without_discovery_script_before_launching():
    from conftest import run_hvdkit

    result = run_hvdkit(["train", "--elastic", "-np", "3", "--min-np", "2"], timeout=120, env=environment())
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--host-discovery-script" in result.stderr


def test_hvdkit_train_elastic_runs_on_two_hosts(tmp_path):
    """``hvdkit train --elastic`` starts horovodrun's elastic mode itself and trains to the end."""
    script, _ = discovery(tmp_path, ["localhost:1", "127.0.0.1:1"])
    cmd = [sys.executable, "-m", "hvdkit", "train", "--elastic", "-np", "2", "--min-np", "1",
           "--host-discovery-script", str(script), "--epochs", "1", "--compression", "topk:0.1",
           "--log-dir", str(tmp_path / "logs")]
    with open(tmp_path / "job.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environment(), cwd=REPO,
                                start_new_session=True)
    finish(proc, str(tmp_path), JOB_TIMEOUT)
    output = (tmp_path / "job.log").read_text()
    assert proc.returncode == 0, output[-5000:]
    assert_nothing_left(str(tmp_path))
    with open(tmp_path / "logs" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [(r["epoch"], r["world_size"]) for r in records] == [(0, 2)]
    assert records[-1]["compression_ratio"] > 2
    assert "2 ranks on 2 host(s)" in output and "final model identical on all 2 ranks" in output


if __name__ == "__main__" and sys.argv[1] == "worker":
    worker(*sys.argv[2:])
