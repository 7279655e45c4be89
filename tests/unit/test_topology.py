"""Topology logic that needs no running job: layouts, emulation, process-set
lists, launcher detection and the settings applied before Horovod starts."""
import pytest

from hvdkit import topology
from hvdkit.runtime import horovod_env
from hvdkit.topology import (emulated_layout, layout_from_node_keys, parse_ranks_per_node, process_set_ranks,
                             topology_for)


def test_nodes_are_grouped_by_key_and_ordered_by_lowest_rank():
    assert layout_from_node_keys(["b", "a", "b", "a"]) == ((0, 2), (1, 3))
    assert layout_from_node_keys([7, 7, 3, 3, 3]) == ((0, 1), (2, 3, 4))
    assert layout_from_node_keys([0]) == ((0,),)


def test_emulated_nodes_are_consecutive_ranks():
    assert emulated_layout(6, 2) == ((0, 1), (2, 3), (4, 5))
    assert emulated_layout(4, 4) == ((0, 1, 2, 3),)


@pytest.mark.parametrize("value, size, expected", [("2", 4, 2), (" 4 ", 4, 4), ("1", 3, 1), ("", 4, None),
                                                   (None, 4, None)])
def test_ranks_per_node_parses(value, size, expected):
    assert parse_ranks_per_node(value, size) == expected


@pytest.mark.parametrize("value", ["3", "0", "-2", "two", "8"])
def test_ranks_per_node_must_divide_the_world(value):
    with pytest.raises(ValueError, match=rf"HVDKIT_RANKS_PER_NODE='{value}' must be a positive integer dividing "
                                         r"the world size 4; valid values: 1, 2, 4"):
        parse_ranks_per_node(value, 4)


def test_process_sets_for_two_nodes_of_two():
    assert process_set_ranks(((0, 1), (2, 3))) == [[0, 1], [2, 3], [0, 2], [1, 3]]


@pytest.mark.parametrize("nodes", [((0, 1, 2, 3),), ((0,), (1,), (2,)), ((0,),), ((0, 1), (2,))])
def test_no_process_sets_when_one_node_one_rank_per_node_or_unequal(nodes):
    assert process_set_ranks(nodes) == []


def test_round_robin_layout_pairs_ranks_by_local_rank():
    assert process_set_ranks(((0, 2), (1, 3))) == [[0, 2], [1, 3], [0, 1], [2, 3]]


def test_topology_fields_for_every_rank_of_a_layout():
    nodes = ((0, 1, 2), (3, 4, 5))
    views = [topology_for(r, nodes, emulated=True, process_set=tuple) for r in range(6)]
    assert [(t.node, t.local_rank, t.local_size, t.num_nodes) for t in views] == [
        (0, 0, 3, 2), (0, 1, 3, 2), (0, 2, 3, 2), (1, 0, 3, 2), (1, 1, 3, 2), (1, 2, 3, 2)]
    assert views[4].intra_node_set == (3, 4, 5) and views[4].cross_node_set == (1, 4)
    assert all(t.hierarchical and t.contiguous and t.homogeneous and t.emulated for t in views)


def test_one_node_uses_the_node_set_and_no_cross_set():
    t = topology_for(1, ((0, 1),), process_set=tuple)
    assert (t.intra_node_set, t.cross_node_set, t.hierarchical) == ((0, 1), None, False)
    single = topology_for(0, ((0,),), process_set=tuple)
    assert (single.size, single.intra_node_set, single.cross_node_set) == (1, None, None)


def test_unequal_nodes_get_no_sets_and_no_hierarchy():
    t = topology_for(2, ((0, 1), (2,)), process_set=tuple)
    assert (t.intra_node_set, t.cross_node_set, t.homogeneous, t.hierarchical) == (None, None, False, False)


def test_round_robin_layout_is_not_contiguous():
    t = topology_for(3, ((0, 2), (1, 3)))
    assert (t.node, t.local_rank, t.contiguous, t.hierarchical) == (1, 1, False, True)


def test_topology_is_frozen():
    t = topology_for(0, ((0,),))
    with pytest.raises(Exception):
        t.rank = 1


def gloo_env(rank, size, local_size, **extra):
    env = {"HOROVOD_GLOO_RENDEZVOUS_ADDR": "127.0.0.1", "HOROVOD_RANK": str(rank), "HOROVOD_SIZE": str(size),
           "HOROVOD_LOCAL_RANK": str(rank % local_size), "HOROVOD_LOCAL_SIZE": str(local_size),
           "HOROVOD_CROSS_SIZE": str(size // local_size)}
    env.update(extra)
    return env


def test_launcher_detection():
    assert topology.detect_launcher({}) == "mpi"
    assert topology.detect_launcher({"OMPI_COMM_WORLD_SIZE": "2"}) == "mpi"
    assert topology.detect_launcher(gloo_env(0, 2, 2)) == "gloo"
    assert topology.detect_launcher({"HOROVOD_CONTROLLER": "GLOO"}) == "gloo"


def test_gloo_layout_comes_from_horovodrun_variables():
    assert topology.discover(gloo_env(5, 6, 3)) == (5, ((0, 1, 2), (3, 4, 5)), False, "gloo")


def test_gloo_emulation_overrides_the_hosts():
    env = gloo_env(3, 4, 4, HVDKIT_RANKS_PER_NODE="2")
    assert topology.discover(env) == (3, ((0, 1), (2, 3)), True, "gloo")
    with pytest.raises(ValueError, match=r"HVDKIT_RANKS_PER_NODE='3'.*valid values: 1, 2, 4"):
        topology.discover(gloo_env(0, 4, 4, HVDKIT_RANKS_PER_NODE="3"))


def test_gloo_with_unequal_hosts_is_refused_clearly():
    env = gloo_env(0, 3, 2)  # hosts with 2 and 1 slots: this rank sees local size 2, cross size 2
    env["HOROVOD_CROSS_SIZE"] = "2"
    with pytest.raises(RuntimeError, match=r"same number of slots on every host.*HOROVOD_LOCAL_SIZE=2, "
                                           r"HOROVOD_CROSS_SIZE=2, HOROVOD_SIZE=3"):
        topology.discover(env)


def test_current_before_init_says_what_to_do():
    with pytest.raises(RuntimeError, match=r"call hvdkit.topology.init\(hvd\) first"):
        topology.current()


def test_settings_never_override_the_user():
    env = {"HOROVOD_CYCLE_TIME": "5"}
    applied = horovod_env.apply_defaults(env)
    assert env["HOROVOD_CYCLE_TIME"] == applied["HOROVOD_CYCLE_TIME"] == "5"
    for name, value in horovod_env.DEFAULTS.items():
        if name != "HOROVOD_CYCLE_TIME":
            assert env[name] == value


def test_gloo_without_horovodrun_variables_says_how_to_launch():
    with pytest.raises(RuntimeError, match=r"HOROVOD_RANK is not set: launch with horovodrun --gloo"):
        topology.discover({"HOROVOD_CONTROLLER": "gloo"})


def test_launch_settings_are_separate_from_the_ones_init_applies():
    env = {}
    horovod_env.apply_defaults(env)
    assert not set(horovod_env.LAUNCH_DEFAULTS) & set(env)
