"""Parameter servers with real processes: servers from hvdkit.ps.launch, workers as separate Python processes.

The fault tests use numpy workers (hvdkit.ps.worker.PSWorker, no framework: they start in a fraction of a
second) whose deltas count steps exactly in float32, so "no acknowledged update lost" is an equality. This
file is also the workers' program: ``python test_ps.py numpy-worker ...``. The torch and Keras shims run as
threads of the test process (one framework import) against server processes.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
NUMEL = 6  # 3 workers' one-hot counters, twice: both shards count every worker


# --- the workers' program ------------------------------------------------------------------------------
def numpy_worker(args):
    from hvdkit.ps.worker import from_env

    ps = from_env(NUMEL)
    args.out = args.out.replace("{worker}", str(ps.worker))
    params = ps.join(np.zeros(NUMEL, np.float32))
    progress = {"joined": params.tolist(), "steps": 0}
    delta = np.zeros(NUMEL, np.float32)
    delta[[ps.worker, ps.worker + NUMEL // 2]] = 1
    for step in range(args.steps):
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(args.sleep)
        if ps.mode.pushes_gradients:
            params = params + ps.exchange_gradient(delta, params)
        else:
            params = ps.exchange_delta(delta)
        progress.update(steps=step + 1, params=params.tolist(), clock=ps.clock, dropped=ps.dropped)
        _write(args.out, progress)
    if args.meet:  # every live worker finished (all run the same steps: an ssp worker waits for the slowest)
        progress["met"] = ps.meet("end", {"steps": args.steps})
    progress["stats"] = ps.client.stats()
    _write(args.out, progress)
    ps.leave(params)


def torch_model_and_data(seed_worker, workers, batch):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, workers * batch, 5, generator=g)
    y = torch.randn(12, workers * batch, 2, generator=g)
    if seed_worker is not None:
        x, y = x[:, seed_worker * batch:(seed_worker + 1) * batch], y[:, seed_worker * batch:(seed_worker + 1) * batch]
    return model, x, y


def _write(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


# --- helpers of the tests -----------------------------------------------------------------------------
class Job:
    """Servers and workers of one test; everything is killed at teardown."""

    def __init__(self, tmp_path):
        self.tmp, self.group, self.workers = tmp_path, None, []

    def servers(self, count, mode, workers, **kwargs):
        from hvdkit.ps.launch import start_servers

        self.group = start_servers(count, mode, workers, stderr=open(self.tmp / "servers.log", "a"), **kwargs)
        return self.group

    def worker(self, kind, wid, steps, kill_at=-1, sleep=0.0, env=None, meet=False):
        out = str(self.tmp / f"worker-{wid}.json")
        cmd = [sys.executable, HERE, kind, "--id", str(wid), "--steps", str(steps), "--kill-at", str(kill_at),
               "--sleep", str(sleep), "--out", out, *(["--meet"] if meet else [])]
        full_env = dict(os.environ, PYTHONPATH=REPO, HVDKIT_PS_WORKER=str(wid), HVDKIT_PS_SERVER_TIMEOUT="1.5",
                        **self.group.env, **(env or {}))
        proc = subprocess.Popen(cmd, env=full_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        self.workers.append(proc)
        proc.out = out
        return proc

    def reader(self):
        """Join as one more worker (the test process itself): the servers' current parameters."""
        from hvdkit.ps import transport
        from hvdkit.ps.worker import PSWorker

        ps = PSWorker(NUMEL, self.group.env["HVDKIT_PS_MODE"], self.group.addresses, 99,
                      key=transport.job_key(self.group.env), server_timeout=1.5, startup_timeout=3.0)
        try:
            return ps.join(np.zeros(NUMEL, np.float32)), ps.client.stats()
        finally:
            ps.client.close()

    def close(self):
        for p in self.workers:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        if self.group is not None:
            self.group.stop()


def finished(proc, timeout=30):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    with open(proc.out) as f:
        return json.load(f)


def wait_for_steps(proc, steps, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(proc.out) as f:
                if json.load(f)["steps"] >= steps:
                    return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"worker did not reach step {steps} in {timeout} s")


@pytest.fixture
def job(tmp_path):
    j = Job(tmp_path)
    yield j
    j.close()


# --- the tests ----------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_sync_equals_single_process_training(job):
    """2 torch workers (threads of this process: no more torch imports), each half of every batch, SGD with
    momentum through 2 replicated server processes == one process on the whole batch (the mean of two equal
    halves' mean losses is the whole batch's mean loss)."""
    import threading

    import torch

    from hvdkit.ps import transport
    from hvdkit.ps.torch_worker import TorchWorker
    from hvdkit.ps.worker import PSWorker

    group = job.servers(2, "sync", 2)
    workers = [torch_model_and_data(w, 2, 4) for w in range(2)]  # built here: torch's seed is process-wide
    results, errors = {}, []

    def train(w):
        try:
            model, x, y = workers[w]
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            numel = sum(p.numel() for p in model.parameters())
            shim = TorchWorker(model.parameters(), optimizer,
                               PSWorker(numel, "sync", group.addresses, w, key=transport.job_key(group.env)))
            shim.join()
            for step in range(12):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(x[step]), y[step]).backward()
                shim.step()
            results[w] = (torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy(), shim.ps.stats())
            shim.leave()
        except Exception as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=train, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    model, x, y = torch_model_and_data(None, 2, 4)
    initial = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(12):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x[step]), y[step]).backward()
        optimizer.step()
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    assert not np.allclose(expected, initial.numpy(), atol=1e-3)  # training moved the parameters
    for params, stats in results.values():
        np.testing.assert_allclose(params, expected, rtol=1e-5, atol=1e-6)
        assert stats["steps"] == 12 and stats["bytes_sent"] > 12 * expected.nbytes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["sync", "ssp:1", "backup:1", "async"])
def test_killed_worker_is_dropped_and_training_goes_on(job, mode):
    """3 workers, one SIGKILLed at step 3: the others finish (sync after the member timeout, logged), every
    applied step counted exactly; then a late worker joins and gets the current parameters."""
    job.servers(2, mode, 3, member_timeout=1.0)
    victim = job.worker("numpy-worker", 2, 20, kill_at=3, meet=True)
    # the survivors outlast the member timeout
    survivors = [job.worker("numpy-worker", w, 20, sleep=0.08, meet=True) for w in range(2)]
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    results = [finished(p) for p in survivors]
    joined, stats = job.reader()
    half = NUMEL // 2
    if mode != "backup:1":  # backup: each shard takes its own first N - B deltas (as TF's per-variable accumulators)
        np.testing.assert_array_equal(joined[:half], joined[half:])  # both shards saw the same pushes
    if mode == "sync":
        # every step's mean gradient is the mean of the one-hot pushes of that step's members
        assert all(r["steps"] == 20 for r in results)
        assert results[0]["params"] == results[1]["params"]
        assert sum(results[0]["params"][:half]) == pytest.approx(20, abs=1e-5)
    elif mode == "backup:1":
        assert all(r["steps"] == 20 for r in results)
        for server, half_params in ((0, joined[:half]), (1, joined[half:])):
            shard = next(s for s in stats[server]["shards"] if s["primary"])
            assert sum(half_params) == pytest.approx(shard["round"], abs=1e-4)  # one mean of one-hots per step
            assert shard["dropped_late"] >= 1
    else:
        # each worker's counter holds exactly its pushes: survivors 20, the victim its 3
        np.testing.assert_array_equal(joined[:half], [20, 20, 3])
    # the survivors' meeting at the end waited for both of them, not for the dead worker
    assert [r["met"] for r in results] == [[[0, {"steps": 20}], [1, {"steps": 20}]]] * 2
    dropped = {w for s in stats for shard in s["shards"] if shard["primary"] for w in shard["dropped_members"]}
    assert 2 in dropped
    assert "dropped from shard" in (job.tmp / "servers.log").read_text()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["ssp:1", "sync"])
def test_late_worker_joins_with_the_current_parameters(job, mode):
    job.servers(2, mode, 1)
    first = job.worker("numpy-worker", 0, 150, sleep=0.01)
    wait_for_steps(first, 20)
    late = job.worker("numpy-worker", 1, 5)
    late_result = finished(late)
    first_result = finished(first)
    joined = late_result["joined"]
    assert joined[1] == 0 and 20 <= joined[0] <= 150  # worker 0's steps so far, none of its own
    if mode == "sync":
        # exactly worker 0's parameters at the step it joined; then 5 steps of the mean of two one-hots
        assert joined == [joined[0], 0, 0, joined[0], 0, 0]
        assert late_result["params"][:3] == [joined[0] + 2.5, 2.5, 0]
        assert first_result["params"][:3] == [150 - 2.5, 2.5, 0]
    else:
        assert first_result["params"][0] == 150 and first_result["params"][1] == 5


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_killed_server_replica_takes_over_without_losing_updates(job, mode):
    job.servers(2, mode, 2, member_timeout=5.0, replica_timeout=1.0)
    procs = [job.worker("numpy-worker", w, 40, sleep=0.01, meet=True) for w in range(2)]
    wait_for_steps(procs[0], 10)
    job.group.kill(0)
    results = [finished(p) for p in procs]
    joined, stats = job.reader()
    if mode == "async":
        np.testing.assert_array_equal(joined, [40, 40, 0, 40, 40, 0])
    else:
        assert results[0]["params"] == results[1]["params"]
        assert results[0]["params"][:2] == pytest.approx([20, 20], abs=1e-4)
    assert [r["met"] for r in results] == [[[0, {"steps": 40}], [1, {"steps": 40}]]] * 2  # held by the replica
    assert [s["server"] for s in stats] == [1]
    assert {shard["shard"] for shard in stats[0]["shards"] if shard["primary"]} == {0, 1}
    assert "takes over shard 0" in (job.tmp / "servers.log").read_text()


@pytest.mark.timeout(60)
def test_whole_job_restarts_from_the_servers_checkpoints(job, tmp_path):
    """Checkpoints every 4 updates; all servers SIGKILLed after 10 pushes: a new job resumes from update 8."""
    job.servers(2, "async", 1, checkpoint=tmp_path / "ckpt", checkpoint_every=4)
    finished(job.worker("numpy-worker", 0, 10))
    for i in range(2):
        job.group.kill(i)
    assert sorted(os.listdir(tmp_path / "ckpt" / "shard-00000"))[-1] == "latest"
    job.servers(2, "async", 1, checkpoint=tmp_path / "ckpt", checkpoint_every=4)
    joined, _ = job.reader()
    np.testing.assert_array_equal(joined, [8, 0, 0, 8, 0, 0])
    resumed = finished(job.worker("numpy-worker", 0, 3))
    assert resumed["joined"][0] == 8 and resumed["params"][0] == 11


@pytest.mark.timeout(60)
def test_compressed_pushes_and_pulls_lose_no_update(job):
    """top-2 of the 6 elements both ways: pushes of a worker's two one-hot counters go through exactly, pulls send
    the change since what each worker holds (the rest follows in later pulls); a dense reader sees every push."""
    job.servers(1, "async", 2, compression="topk:0.3")
    results = [finished(p) for p in [job.worker("numpy-worker", w, 15) for w in range(2)]]
    joined, stats = job.reader()
    np.testing.assert_array_equal(joined, [15, 15, 0, 15, 15, 0])
    for r in results:  # a worker's own counter is never behind its own pushes by more than the pull lag
        assert r["stats"][0]["bytes_in"] > 0 and 0 < r["params"][0] + r["params"][1] <= 30


@pytest.mark.timeout(60)
def test_a_message_without_the_job_secret_is_refused_and_not_applied(job):
    import zmq

    from hvdkit.ps import transport, wire

    job.servers(1, "async", 1)
    finished(job.worker("numpy-worker", 0, 4))
    context = zmq.Context()
    try:
        sock = transport.connect_dealer(context, job.group.addresses[0])
        header = {"op": "step", "w": 7, "shard": 0, "clock": 0, "seq": 0, "rid": 1, "enc": None}
        for key in (None, b"x" * 32):
            transport.send(sock, None, wire.encode(header, [np.full(NUMEL, 1000, np.float32)], key))
        assert not sock.poll(500)  # no answer either
    finally:
        context.destroy(linger=0)
    joined, stats = job.reader()
    np.testing.assert_array_equal(joined, [4, 0, 0, 4, 0, 0])
    assert stats[0]["refused"] == 2
    assert "refused a message" in (job.tmp / "servers.log").read_text()


@pytest.mark.timeout(90)
def test_servers_as_a_service_and_workers_under_hvdkit_run(tmp_path):
    """`hvdkit ps serve` prints the workers' variables; `hvdkit run -np 2` runs the workers (ids from mpirun)."""
    serve = subprocess.Popen([sys.executable, "-m", "hvdkit", "ps", "serve", "--servers", "2", "--workers", "2",
                              "--mode", "ssp:1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    try:
        env = dict(os.environ, PYTHONPATH=REPO)
        for _ in range(5):  # export NAME=VALUE lines
            name, _, value = serve.stdout.readline().strip().removeprefix("export ").partition("=")
            env[name] = value.strip("'")
        assert env["HVDKIT_PS_MODE"] == "ssp:1" and len(env["HVDKIT_PS_SECRET"]) == 64
        out = str(tmp_path / "worker-{worker}.json")
        run = subprocess.run([sys.executable, "-m", "hvdkit", "run", "-np", "2", "--", sys.executable, HERE,
                              "numpy-worker", "--id", "-1", "--steps", "10", "--out", out], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=75)
        assert run.returncode == 0, run.stdout + run.stderr
        for rank in range(2):
            with open(out.format(worker=rank)) as f:
                params = json.load(f)["params"]
            # its own 10 pushes; the other's at least up to step 10 - 1 - 1 (the SSP bound), no third worker
            assert params[rank] == 10 and 9 <= params[1 - rank] <= 10 and params[2] == 0
    finally:
        serve.terminate()
        serve.wait(timeout=20)
    assert serve.returncode == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args,message", [
    (["--mode", "backup:2"], "--mode backup:2: B must be less than --workers (2)"),
    (["--mode", "ssp:-1"], "--mode: update mode 'ssp:-1'"),
    (["--servers", "0"], "--servers must be >= 1, got 0"),
    (["--compression", "powersgd:2"], "compression 'powersgd:2' cannot compress parameter-server messages"),
])
def test_bad_server_options_stop_with_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "hvdkit", "ps", "serve", "--workers", "2", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=50)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def _main():
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["numpy-worker"])
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--meet", action="store_true", help="meet the other workers after the last step")
    args = parser.parse_args()
    numpy_worker(args)


if __name__ == "__main__":
    _main()
