"""The emulated cluster's names, files and shaping, without making anything."""
import pytest

from hvdkit.errors import UsageError
from hvdkit.runtime.cluster import names, net
from hvdkit.runtime.cluster.layout import Layout, parse_rate


@pytest.mark.parametrize("text, mbit", [("1gbit", 1000.0), ("100mbit", 100.0), ("2.5gbit", 2500.0),
                                        ("500kbit", 0.5), ("10GBIT", 10000.0)])
def test_rates_read_as_tc_writes_them(text, mbit):
    assert parse_rate(text) == mbit


@pytest.mark.parametrize("text", ["1gb", "fast", "-1gbit", "0mbit", "gbit", ""])
def test_a_bad_rate_names_itself_and_the_units(text):
    with pytest.raises(UsageError, match=r"--bandwidth .*kbit, mbit, gbit"):
        parse_rate(text)


@pytest.mark.parametrize("kwargs, flag", [({"nodes": 0}, "--nodes 0"), ({"nodes": 65}, "--nodes 65"),
                                          ({"slots": 0}, "--slots 0"), ({"rate_mbit": 0.0}, "--bandwidth")])
def test_a_bad_size_is_refused(kwargs, flag):
    with pytest.raises(UsageError, match=flag):
        Layout(**{"nodes": 2, "slots": 1, "rate_mbit": 1000.0, **kwargs})


def test_nodes_files_and_addresses():
    layout = Layout(3, 2, 1000.0, "/tmp/c")
    assert layout.hostnames == ["node1", "node2", "node3"]
    assert [layout.address(n) for n in layout.hostnames] == ["10.213.7.1", "10.213.7.2", "10.213.7.3"]
    assert layout.bridge_address == "10.213.7.254"
    assert layout.hostfile() == "node1 slots=2\nnode2 slots=2\nnode3 slots=2\n"
    assert layout.host_list() == "node1:2,node2:2,node3:2" and layout.host_list(1) == "node1:1,node2:1,node3:1"
    assert all(len(layout.namespace(n)) <= 15 for n in Layout(64, 1, 1.0).hostnames)  # a link name's limit


@pytest.mark.parametrize("mbit, burst", [(100.0, 512 * 1024), (1000.0, 2_000_000), (10000.0, 20_000_000)])
def test_the_bucket_holds_four_timer_ticks_and_never_less_than_512_kib(mbit, burst):
    args = net.shaping(mbit)
    assert args[:3] == ["tbf", "rate", f"{mbit:g}mbit"]
    assert int(args[args.index("burst") + 1]) == burst  # rate / 8 * 4 / HZ, HZ = 250


def test_name_blocks_are_added_once_and_removed_leaving_the_rest(tmp_path):
    hosts, config = tmp_path / "hosts", tmp_path / "ssh" / "config"
    hosts.write_text("127.0.0.1 localhost\n")
    config.parent.mkdir()
    config.write_text("Host other\n  User me\n")
    layout = Layout(2, 1, 1.0)
    for _ in range(2):  # a second up replaces the block, never stacks it
        names.add_hosts(layout, str(hosts))
        names.add_ssh_include("/c/ssh_config", str(config))
    assert hosts.read_text().count("10.213.7.2 node2") == 1
    assert config.read_text().startswith(f"{names.BEGIN}\nInclude /c/ssh_config\n{names.END}\nHost other")
    names.remove_all(str(hosts), str(config))
    assert hosts.read_text() == "127.0.0.1 localhost\n"
    assert config.read_text() == "Host other\n  User me\n"
