"""Atomic checkpoints: the newest complete save loads; damage, killed writers, unwritable directories
and ranks that disagree are detected, with messages that name the directory. The mechanism is
exercised through the torch codec here (``test_tf_codec.py`` runs it with TensorFlow's); it imports
no framework itself."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from hvdkit.state import checkpoint
from hvdkit.state.torch_codec import CODEC as TORCH


def test_round_trip_and_latest_pointer(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))}, codec=TORCH)
    loaded = checkpoint.load_latest(tmp_path, codec=TORCH)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.full((3,), 3.0))
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == ["ckpt-00000002.pt", "ckpt-00000003.pt"]
    assert checkpoint.read_pointer(tmp_path)[0][0] == "ckpt-00000003.pt"


def test_empty_directory_has_no_checkpoint(tmp_path):
    assert checkpoint.load_latest(tmp_path, codec=TORCH) is None
    assert checkpoint.load_latest(tmp_path / "missing", codec=TORCH) is None


def test_corrupt_file_is_refused(tmp_path):
    path = checkpoint.save(tmp_path, 7, {"w": torch.ones(100)}, codec=TORCH)
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"garbage!")
    with pytest.raises(checkpoint.CheckpointError, match="does not match the checksum"):
        checkpoint.load_latest(tmp_path, codec=TORCH)


def test_missing_file_and_malformed_pointer_are_refused(tmp_path):
    path = checkpoint.save(tmp_path, 7, {"w": torch.ones(1)}, codec=TORCH)
    os.unlink(path)
    with pytest.raises(checkpoint.CheckpointError, match=r"names 'ckpt-00000007.pt', which cannot be read"):
        checkpoint.load_latest(tmp_path, codec=TORCH)
    (tmp_path / "latest").write_text("half a line")
    with pytest.raises(checkpoint.CheckpointError, match="is malformed"):
        checkpoint.load_latest(tmp_path, codec=TORCH)


def test_bad_step_and_keep_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"step must be an integer >= 0, got -1"):
        checkpoint.save(tmp_path, -1, {}, codec=TORCH)
    with pytest.raises(ValueError, match=r"keep must be an integer >= 1 \(checkpoints kept\), got 0"):
        checkpoint.save(tmp_path, 1, {}, keep=0, codec=TORCH)


def test_clean_stale_removes_temporaries_and_uncommitted_saves_only(tmp_path):
    checkpoint.save(tmp_path, 4, {"w": 4}, keep=5, codec=TORCH)
    checkpoint.save(tmp_path, 8, {"w": 8}, keep=5, codec=TORCH)
    # what a writer killed during the save of step 9 leaves: a temporary and a file latest never named
    (tmp_path / ".tmp-123-ckpt-00000009.rank-00001.pt").write_bytes(b"half a checkpoint")
    (tmp_path / "ckpt-00000009.rank-00000.pt").write_bytes(b"complete, but its save never committed")
    (tmp_path / "notes.txt").write_text("not ours")
    checkpoint.clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000004.pt", "ckpt-00000008.pt", "latest",
                                                          "notes.txt"]
    assert checkpoint.load_latest(tmp_path, codec=TORCH) == {"w": 8}


def test_clean_stale_without_latest_removes_every_save(tmp_path):
    (tmp_path / "ckpt-00000001.pt").write_bytes(b"first save, killed before latest was written")
    checkpoint.clean_stale(tmp_path)
    assert list(tmp_path.iterdir()) == []
    checkpoint.clean_stale(tmp_path / "missing")  # nothing to clean is fine


def test_failed_write_leaves_latest_on_the_previous_save(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 1, {"w": 1}, codec=TORCH)

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "replace", full_disk)
    with pytest.raises(checkpoint.CheckpointError, match=rf"in directory '{tmp_path}': No space left on device"):
        checkpoint.save(tmp_path, 2, {"w": 2}, codec=TORCH)
    monkeypatch.undo()
    assert checkpoint.load_latest(tmp_path, codec=TORCH) == {"w": 1}
    assert not list(tmp_path.glob(".tmp-*"))  # the failed writer removed its temporary


def test_path_under_a_file_fails_naming_the_directory(tmp_path):
    target = tmp_path / "file-not-dir"
    target.write_text("x")
    with pytest.raises(checkpoint.CheckpointError, match=rf"cannot create checkpoint directory '{target}/sub'"):
        checkpoint.save(target / "sub", 1, {"w": torch.ones(1)}, codec=TORCH)


# A read-only or full file system, as root too: root ignores permission bits, but not a read-only
# mount (EROFS) or a full one (ENOSPC). An unprivileged user namespace may mount small tmpfs file
# systems; the saves run inside one. As another user, permission bits are enough (next test).
NAMESPACE_SAVES = textwrap.dedent("""
    import sys, torch
    from hvdkit.state import checkpoint
    from hvdkit.state.torch_codec import CODEC as TORCH
    for directory in sys.argv[1:]:
        try:
            checkpoint.save(directory, 1, {"w": torch.zeros(1 << 16)}, codec=TORCH)
        except checkpoint.CheckpointError as err:
            print(err)
""")


def _user_namespaces():
    return shutil.which("unshare") and subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _user_namespaces(), reason="needs unshare -Urm (unprivileged user namespaces)")
def test_read_only_or_full_file_system_fails_loudly(tmp_path):
    read_only, full = tmp_path / "read-only", tmp_path / "full"
    read_only.mkdir()
    full.mkdir()
    script = (f"mount -t tmpfs -o ro,size=1m hvdkit-test {read_only} && mount -t tmpfs -o size=64k hvdkit-test {full} "
              f"&& exec {sys.executable} -c '{NAMESPACE_SAVES}' {read_only} {full}")
    result = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"cannot write checkpoint file 'ckpt-00000001.pt' in directory '{read_only}': Read-only file system",
        f"cannot write checkpoint file 'ckpt-00000001.pt' in directory '{full}': No space left on device"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (the mount test covers root)")
def test_read_only_directory_fails_loudly(tmp_path):
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(checkpoint.CheckpointError, match=rf"in directory '{tmp_path}': Permission denied"):
            checkpoint.save(tmp_path, 1, {"w": 1}, codec=TORCH)
    finally:
        os.chmod(tmp_path, 0o700)


KILLED_WRITER = textwrap.dedent("""
    import sys, torch
    from hvdkit.state import checkpoint
    from hvdkit.state.torch_codec import CODEC as TORCH
    directory, step = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    while True:
        step += 1
        single = {"step": step, "w": torch.full((1 << 17,), float(step))}
        checkpoint.save(directory, step, single, codec=TORCH)
        checkpoint.save_sharded(directory + "-sharded", step, 0, {"step": step, "w": single["w"]},
                                lambda obj: [obj], shared=single, codec=TORCH)
""")


def test_a_writer_killed_at_any_moment_never_leaves_latest_on_a_partial_save(tmp_path):
    """SIGKILL a process that saves checkpoints in a loop, at random moments: each time, after
    clean_stale, the newest save loads whole and consistent, and the next writer carries on."""
    import random

    directory, step = tmp_path / "ckpt", 0
    for _ in range(4):
        writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(directory), str(step)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline() == "ready\n"
        time.sleep(random.uniform(0.1, 1.0))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        writer.stdout.close()
        for path, load in ((directory, _load_latest), (tmp_path / "ckpt-sharded", _load_one_rank)):
            checkpoint.clean_stale(path)
            assert not [name for name in os.listdir(path) if name.startswith(".tmp-")]
            if os.path.exists(path / "latest"):
                payload = load(path)
                assert torch.equal(payload["w"], torch.full((1 << 17,), float(payload["step"])))
        if os.path.exists(directory / "latest"):
            step = checkpoint.load_latest(directory, codec=TORCH)["step"]
    assert step > 0, "the writer never completed a save: the machine is too slow for this test's delays"


def _load_latest(path):
    return checkpoint.load_latest(path, codec=TORCH)


def _load_one_rank(path):
    step, shared, local = checkpoint.load_sharded(path, 0, 1, lambda obj: [obj], codec=TORCH)
    assert shared["step"] == local["step"] == step
    return local


# ---- the collective protocol, with ranks as threads --------------------------------------------
class ThreadWorld:
    """``allgather`` for ranks that are threads of this process (a barrier per collective)."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=30)
        self.slots = [None] * size

    def allgather(self, rank):
        def gather(obj):
            self.slots[rank] = obj
            self.barrier.wait()
            result = list(self.slots)
            self.barrier.wait()
            return result
        return gather

    def run(self, function):
        """``function(rank, allgather)`` on every rank; the results, or the exceptions raised."""
        results = [None] * self.size

        def body(rank):
            try:
                results[rank] = function(rank, self.allgather(rank))
            except Exception as err:  # collected: each rank's outcome is what the tests check
                results[rank] = err

        threads = [threading.Thread(target=body, args=(rank,)) for rank in range(self.size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a rank hung"
        return results


def save_all(directory, step, world, keep=2, expect_errors=False):
    results = world.run(lambda rank, gather: checkpoint.save_sharded(
        directory, step, rank, {"rank": rank, "step": step}, gather,
        shared={"step": step} if rank == 0 else None, keep=keep, codec=TORCH))
    assert expect_errors or not any(isinstance(r, Exception) for r in results), results
    return results


def test_sharded_save_writes_one_file_per_rank_and_each_rank_loads_its_own(tmp_path):
    world = ThreadWorld(3)
    for step in (5, 10, 15):
        save_all(tmp_path, step, world)
    names = [name for name, _ in checkpoint.read_pointer(tmp_path)]
    assert names == ["ckpt-00000015.pt"] + [f"ckpt-00000015.rank-0000{r}.pt" for r in range(3)]
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == sorted(
        [f"ckpt-000000{s}.pt" for s in (10, 15)] + [f"ckpt-000000{s}.rank-0000{r}.pt" for s in (10, 15)
                                                     for r in range(3)])
    loaded = world.run(lambda rank, gather: checkpoint.load_sharded(tmp_path, rank, 3, gather, codec=TORCH))
    assert loaded == [(15, {"step": 15}, {"rank": rank, "step": 15}) for rank in range(3)]
    assert checkpoint.load_latest(tmp_path, codec=TORCH) == {"step": 15}


def test_one_rank_failing_to_write_fails_every_rank_and_keeps_latest(tmp_path, monkeypatch):
    world = ThreadWorld(2)
    save_all(tmp_path, 1, world)
    real_write = checkpoint._atomic_write

    def rank1_disk_full(directory, name, data):
        if ".rank-00001" in name:
            raise checkpoint.CheckpointError(f"cannot write checkpoint file {name!r} in directory "
                                             f"{os.fspath(directory)!r}: No space left on device")
        return real_write(directory, name, data)

    monkeypatch.setattr(checkpoint, "_atomic_write", rank1_disk_full)
    results = save_all(tmp_path, 2, world, expect_errors=True)
    monkeypatch.undo()
    assert all(isinstance(r, checkpoint.CheckpointError) for r in results), results
    assert {str(r) for r in results} == {
        f"saving checkpoint step 2 in '{tmp_path}' failed on rank 1: cannot write checkpoint file "
        f"'ckpt-00000002.rank-00001.pt' in directory '{tmp_path}': No space left on device"}
    assert checkpoint.read_pointer(tmp_path)[0][0] == "ckpt-00000001.pt"
    checkpoint.clean_stale(tmp_path)  # what the next start does with rank 0's files of step 2
    assert not list(tmp_path.glob("ckpt-00000002*"))


def test_a_corrupt_shard_fails_every_rank_naming_it(tmp_path):
    world = ThreadWorld(2)
    save_all(tmp_path, 3, world)
    with open(tmp_path / "ckpt-00000003.rank-00001.pt", "ab") as f:
        f.write(b"!")
    results = world.run(lambda rank, gather: checkpoint.load_sharded(tmp_path, rank, 2, gather, codec=TORCH))
    assert all(isinstance(r, checkpoint.CheckpointError) for r in results), results
    assert all("failed on rank 1" in str(r) and "ckpt-00000003.rank-00001.pt" in str(r)
               and "does not match the checksum" in str(r) for r in results)


def test_a_different_world_size_is_refused(tmp_path):
    save_all(tmp_path, 3, ThreadWorld(2))
    results = ThreadWorld(3).run(
        lambda rank, gather: checkpoint.load_sharded(tmp_path, rank, 3, gather, codec=TORCH))
    assert all(isinstance(r, checkpoint.CheckpointError) for r in results), results
    assert f"checkpoint step 3 in '{tmp_path}' was written by 2 ranks, this job has 3" in str(results[0])
    assert "resume with -np 2" in str(results[0])


def test_ranks_that_see_different_directories_are_refused(tmp_path):
    shared, elsewhere = tmp_path / "shared", tmp_path / "node-local"
    save_all(shared, 3, ThreadWorld(2))
    results = ThreadWorld(2).run(
        lambda rank, gather: checkpoint.load_sharded(shared if rank == 0 else elsewhere, rank, 2, gather,
                                                     codec=TORCH))
    assert all(isinstance(r, checkpoint.CheckpointError) for r in results), results
    assert "ranks found different checkpoints" in str(results[0])
    assert "rank 0: step 3, rank 1: none" in str(results[0])


def test_no_checkpoint_on_any_rank_is_a_fresh_start(tmp_path):
    results = ThreadWorld(2).run(lambda rank, gather: checkpoint.load_sharded(tmp_path, rank, 2, gather, codec=TORCH))
    assert results == [None, None]


def test_rank_0_must_pass_the_shared_payload(tmp_path):
    with pytest.raises(ValueError, match="rank 0 must pass the shared payload"):
        checkpoint.save_sharded(tmp_path, 1, 0, {}, lambda obj: [obj], codec=TORCH)


def test_loading_cleans_what_a_killed_save_left_and_a_bad_pointer_fails_every_rank(tmp_path):
    world = ThreadWorld(2)
    save_all(tmp_path, 3, world)
    (tmp_path / ".tmp-99-ckpt-00000004.rank-00001.pt").write_bytes(b"half")
    (tmp_path / "ckpt-00000004.rank-00000.pt").write_bytes(b"whole, never committed")
    loaded = world.run(lambda rank, gather: checkpoint.load_sharded(tmp_path, rank, 2, gather, codec=TORCH))
    assert [step for step, _, _ in loaded] == [3, 3]
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob("ckpt-00000004*"))
    (tmp_path / "latest").write_text("ckpt-00000003.pt not-a-checksum\n")
    results = world.run(lambda rank, gather: checkpoint.load_sharded(tmp_path, rank, 2, gather, codec=TORCH))
    assert all(isinstance(r, checkpoint.CheckpointError) and "is malformed" in str(r) for r in results), results


def test_a_payload_one_rank_cannot_serialise_fails_every_rank(tmp_path):
    results = ThreadWorld(2).run(lambda rank, gather: checkpoint.save_sharded(
        tmp_path, 1, rank, {"bad": (lambda: None) if rank == 1 else None}, gather, shared={} if rank == 0 else None,
        codec=TORCH))
    assert all(isinstance(r, checkpoint.CheckpointError) for r in results), results
    assert f"saving checkpoint step 1 in '{tmp_path}' failed on rank 1: AttributeError: Can't pickle local object" in str(results[0])
    assert checkpoint.read_pointer(tmp_path) is None


# ---- one mechanism, no framework of its own ----------------------------------------------------
def test_the_mechanism_imports_neither_framework():
    script = ("import sys\n"
              "from hvdkit.state import checkpoint\n"
              "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_codec_is_required_and_checked(tmp_path):
    with pytest.raises(TypeError, match=r"codec must be a hvdkit.state.checkpoint.Codec .* got 'pickle'"):
        checkpoint.save(tmp_path, 1, {}, codec="pickle")

    class Dotted(type(TORCH)):
        extension = "tar.gz"

    with pytest.raises(ValueError, match=r"extension must be lowercase letters and digits.* got 'tar.gz'"):
        checkpoint.load_latest(tmp_path, codec=Dotted())
    with pytest.raises(TypeError, match="codec"):
        checkpoint.load_latest(tmp_path)  # keyword-only and required


def test_a_file_matching_its_checksum_that_the_codec_cannot_read_is_named(tmp_path):
    class Truncating(type(TORCH)):
        def dumps(self, payload):
            return super().dumps(payload)[:-100]

    checkpoint.save(tmp_path, 3, {"w": torch.ones(1000)}, codec=Truncating())
    with pytest.raises(checkpoint.CheckpointError, match=r"ckpt-00000003.pt' matches its checksum but torch.save "
                                                         r"cannot read it: "):
        checkpoint.load_latest(tmp_path, codec=TORCH)
