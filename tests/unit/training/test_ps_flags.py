"""``hvdkit train --mode ps``'s flag checks (before any rank or server starts), the metrics it adds to an
epoch's record, how its workers are launched and learn their place, and where its servers listen."""
import argparse
import types

import pytest

from hvdkit.cli import train as train_cli
from hvdkit.errors import UsageError
from hvdkit.ps import launch
from hvdkit.training import config as train_config
from hvdkit.training import ps_loop

DIGITS_TRAIN = 1438


def make(tmp_path, **overrides):
    return train_config.TrainConfig(log_dir=str(tmp_path), **overrides)


def validate(config, world_size=2, environ=None):
    train_config.validate(config, world_size, DIGITS_TRAIN, environ={} if environ is None else environ)


@pytest.mark.parametrize("update", ["sync", "ssp:0", "ssp:3", "async", "async:scaled", "backup:1", "backup:3"])
def test_every_update_mode_is_accepted(tmp_path, update):
    validate(make(tmp_path, mode="ps", update=update), world_size=4)


@pytest.mark.parametrize("compression", ["none", "fp16", "bf16", "int8", "topk:0.01", "randomk:0.1", "onebit"])
def test_the_servers_compressors_are_accepted(tmp_path, compression):
    validate(make(tmp_path, mode="ps", compression=compression, servers=1))


@pytest.mark.parametrize("overrides, world, message", [
    ({"update": "backup:2"}, 2, r"--update backup:2: B must be less than the number of workers \(-np 2\)"),
    ({"update": "backup:4"}, 4, r"--update backup:4: B must be less than the number of workers \(-np 4\)"),
    ({"servers": 0}, 2, "--servers must be >= 1 with --mode ps, got 0"),
    ({"servers": -3}, 2, "--servers must be >= 1 with --mode ps, got -3"),
    ({"hierarchical": True, "ranks_per_node": 2}, 4, "--mode ps with --hierarchical: there is no allreduce"),
    ({"hierarchical": True}, 4, "--mode ps with --hierarchical: "),  # named before the one-node complaint
    ({"pipeline_stages": 2}, 2, "--mode ps with --pipeline-stages 2: "),
    ({"average_every": 4}, 2, "--mode ps with --average-every 4: "),
    ({"checkpoint": "CKPT", "checkpoint_every": 5}, 2, "--mode ps with --checkpoint-every 5: the servers save "
                                                       "their shards at each epoch's end"),
    ({"compression": "powersgd:4"}, 2, "--mode ps with --compression powersgd:4: the parameter servers compress "
                                       "pushes and pulls with none, fp16, bf16, int8, topk, randomk, onebit"),
    ({"compression": "gzip"}, 2, "--compression: .*gzip"),
    ({"update": "sometimes"}, 2, "--update sometimes: unknown update mode 'sometimes'; valid modes: sync, ssp:S "
                                 r"\(S >= 0\), async, async:scaled, backup:B \(B >= 1\)"),
    ({"update": "ssp"}, 2, "--update ssp: unknown update mode 'ssp'; valid modes: sync, "),
    ({"update": "ssp:x"}, 2, "--update ssp:x: .*must be an integer >= 0; valid modes: sync, "),
    ({"update": "backup:0"}, 2, "--update backup:0: .*must be an integer >= 1; valid modes: "),
    ({"update": "async:fast"}, 2, "--update async:fast: unknown update mode"),
])
def test_bad_combinations_are_named(tmp_path, overrides, world, message):
    if "checkpoint" in overrides:
        overrides = dict(overrides, checkpoint=str(tmp_path / "CKPT"))
    with pytest.raises(UsageError, match=message):
        validate(make(tmp_path, mode="ps", **overrides), world_size=world)


@pytest.mark.parametrize("overrides, message", [
    ({"servers": 3}, r"--servers 3 needs --mode ps \(with --mode allreduce there are no servers\)"),
    ({"update": "async"}, "--update async needs --mode ps"),
])
def test_server_flags_without_mode_ps_are_refused(tmp_path, overrides, message):
    with pytest.raises(UsageError, match=message):
        validate(make(tmp_path, **overrides))


def parse(argv):
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_elastic_is_refused_before_anything_starts(tmp_path):
    args = parse(["--mode", "ps", "--elastic", "--log-dir", str(tmp_path)])
    with pytest.raises(UsageError, match="--mode ps with --elastic: "):
        train_cli.main(args)


def test_the_flags_reach_the_ranks(tmp_path):
    config = make(tmp_path, mode="ps", servers=3, update="ssp:2", np=4)
    back = train_config.from_args(parse(train_config.to_argv(config)))
    assert (back.mode, back.servers, back.update) == ("ps", 3, "ssp:2")
    assert "--mode" not in train_config.to_argv(make(tmp_path))  # the allreduce job's argv is unchanged


LAUNCHED = {"OMPI_COMM_WORLD_SIZE": "2", "HVDKIT_PS_SERVERS": "tcp://127.0.0.1:1,tcp://127.0.0.1:2",
            "HVDKIT_PS_MODE": "sync", "HVDKIT_PS_COMPRESSION": "none"}


@pytest.mark.parametrize("overrides, environ, message", [
    ({"update": "async"}, {}, "--update async, but the servers in HVDKIT_PS_SERVERS run sync"),
    ({"servers": 1}, {}, "--servers 1, but HVDKIT_PS_SERVERS lists 2 server"),
    ({"compression": "fp16"}, {}, "--compression fp16, but the servers in HVDKIT_PS_SERVERS compress with none"),
    ({"update": "ssp:1"}, {"HVDKIT_PS_MODE": "ssp:2"}, "--update ssp:1, but the servers .* run ssp:2"),
])
def test_given_servers_must_match_the_flags(tmp_path, overrides, environ, message):
    validate(make(tmp_path, mode="ps"), environ=LAUNCHED)  # matching: accepted
    with pytest.raises(UsageError, match=message):
        validate(make(tmp_path, mode="ps", **overrides), environ=dict(LAUNCHED, **environ))


# --- the record's parameter-server fields, against the sums done here ------------------------------------
def worker(index, clock, steps, dropped, received, answers, total, worst):
    return {"worker": index, "clock": clock, "steps": steps, "dropped": dropped, "bytes_received": received,
            "staleness_count": answers, "staleness_sum": total, "staleness_max": worst}


def test_ps_fields_sum_the_workers_at_the_meeting(tmp_path):
    """Worker 2 died: the record covers the three others, and says which they are."""
    gathered = [worker(0, 40, 23, 3, 2300, 23, 46, 5), worker(1, 45, 23, 0, 4600, 20, 10, 2),
                worker(3, 44, 23, 1, 0, 0, 0, 0)]
    fields = ps_loop.ps_fields(make(tmp_path, mode="ps", update="backup:1", servers=2), gathered)
    assert fields["workers"] == [0, 1, 3]
    assert fields["worker_clocks"] == [40, 45, 44]
    assert (fields["clock_min"], fields["clock_max"]) == (40, 45)
    assert fields["worker_staleness"] == [2.0, 0.5, 0.0]
    assert fields["worker_staleness_max"] == [5, 2, 0]
    assert fields["staleness_mean"] == pytest.approx(56 / 43)
    assert fields["staleness_max"] == 5
    assert fields["worker_dropped"] == [3, 0, 1]
    assert fields["dropped_updates"] == 4
    assert fields["bytes_received_per_step"] == pytest.approx(6900 / 69)
    assert (fields["update"], fields["servers"]) == ("backup:1", 2)
    line = ps_loop.format_epoch(dict(fields, epoch=0, loss=1.0, test_accuracy=0.5, samples_per_sec=10.0,
                                     samples_per_sec_per_rank=5.0, bytes_per_step=100.0, compression_ratio=1.0))
    assert line.endswith("clock 40..45  staleness 1.30 (max 5)  dropped 4")


def test_a_worker_launched_on_its_own_takes_its_place_from_hvdkit_train():
    one_rank = types.SimpleNamespace(rank=0, size=1, num_nodes=1)  # Horovod's view inside `hvdkit run -np 1`
    environ = {"HVDKIT_PS_WORKER": "2", ps_loop.WORKERS_ENV: "4", ps_loop.NODES_ENV: "2"}
    assert ps_loop.place(one_rank, environ) == (2, 4, 2)
    launch_of_all = types.SimpleNamespace(rank=3, size=4, num_nodes=1)  # mpirun -np 4 hvdkit train --mode ps
    assert ps_loop.place(launch_of_all, {}) == (3, 4, 1)


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan", ""])
def test_a_bad_member_timeout_is_named_before_launch(tmp_path, value):
    with pytest.raises(UsageError, match=f"HVDKIT_PS_MEMBER_TIMEOUT='{value}': expected a number of seconds > 0"):
        validate(make(tmp_path, mode="ps"), environ={"HVDKIT_PS_MEMBER_TIMEOUT": value})
    assert ps_loop.member_timeout({"HVDKIT_PS_MEMBER_TIMEOUT": "2.5"}) == 2.5
    assert ps_loop.member_timeout({}) == ps_loop.MEMBER_TIMEOUT


def test_each_worker_is_a_launch_of_one_rank_on_its_slot(tmp_path):
    from hvdkit.training import ps_job

    config = make(tmp_path, mode="ps", np=3, hosts="node1:2,node2:2", launcher="gloo")
    assert ps_job.worker_hosts(config) == ["node1", "node1", "node2"]
    command = ps_job.worker_command(config, "node2")
    assert command[command.index("run"):command.index("--")] == ["run", "-np", "1", "--gloo", "-H", "node2:1"]
    assert command[command.index("--") + 1:][1:4] == ["-m", "hvdkit", "train"]
    assert ps_job.worker_hosts(make(tmp_path, mode="ps", np=2)) == ["localhost", "localhost"]
    assert "-H" not in ps_job.worker_command(make(tmp_path, mode="ps", np=2), "localhost")


# --- where the servers listen ---------------------------------------------------------------------------
def test_servers_of_a_one_host_job_listen_on_loopback():
    assert launch.listen_host(["localhost"], environ={}) == "127.0.0.1"
    assert launch.listen_host(["localhost", "127.0.0.1"], environ={}) == "127.0.0.1"
    assert launch.listen_host(["node7"], environ={launch.HOST_ENV: "10.1.2.3"}) == "10.1.2.3"


def test_servers_of_a_multi_host_job_listen_where_the_route_to_the_hosts_starts():
    """127.0.0.2 is another host to the job (not this one's name), and every Linux kernel routes it through
    ``lo``, whose address is 127.0.0.1: the servers must take the route's source address, not the target's."""
    assert launch.listen_host(["localhost", "127.0.0.2"], environ={}) == "127.0.0.1"


def test_an_unresolvable_host_is_named():
    with pytest.raises(ValueError, match="host 'no-such-host.invalid' does not resolve.*HVDKIT_PS_HOST"):
        launch.listen_host(["no-such-host.invalid"], environ={})


# --- a worker's staleness, against the servers' update counts it was sent ---------------------------------
def test_a_workers_staleness_counts_the_others_updates_between_its_pulls():
    from hvdkit.ps.worker import PSWorker

    ps = PSWorker(8, "async", ["tcp://127.0.0.1:9"], 0, startup_timeout=1.0)  # connects lazily: no server needed
    try:
        ps.updates = 3  # what its join was told
        for updates in (4, 7, 8, 12):  # its own update, then 2, 0 and 3 of the others' besides its own
            ps._observe({0: ({"updates": updates}, []), 1: ({"updates": updates}, [])})
        assert ps.staleness == [4, 0 + 2 + 0 + 3, 3]
        assert ps.stats()["staleness_sum"] == 5 and ps.stats()["staleness_max"] == 3
    finally:
        ps.client.close()

