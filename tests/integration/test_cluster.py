"""``hvdkit cluster``: emulated nodes that launchers reach over ssh, with shaped links.

Checked against the system itself (``ip``, ``/etc/hosts``, ``ps``), a plain
socket transfer timed here, and the same training run on one host.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import run_hvdkit

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="an emulated cluster needs root (namespaces, tc)")

RATE_MBIT = 200


def names(kind):
    out = subprocess.run(["ip", "-o", *(["netns", "list"] if kind == "netns" else ["link", "show"])],
                         capture_output=True, text=True, check=True).stdout
    if kind == "netns":
        return [line.split()[0] for line in out.splitlines()]
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def leftovers(directory):
    """Everything of a cluster that could outlive ``down``."""
    found = [ns for ns in names("netns") if ns.startswith("hvdkit-")]
    found += [link for link in names("link") if link.startswith("hvdkit")]
    for path in ("/etc/hosts", os.path.expanduser("~/.ssh/config")):
        if os.path.exists(path) and "hvdkit cluster" in open(path).read():
            found.append(path)
    if shutil.which("iptables"):
        rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
        found += [rule for rule in rules.splitlines() if "hvdkit-cluster" in rule]
    found += [f"sshd {line}" for line in subprocess.run(["ps", "-eo", "pid,args"], capture_output=True,
                                                         text=True).stdout.splitlines() if directory in line]
    if os.path.exists(directory):
        found.append(directory)
    return found


def cluster(*args, timeout=60):
    return run_hvdkit(["cluster", *args], timeout=timeout)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("cluster"))
    cluster("down")  # a cluster left by an earlier, killed run
    up = cluster("up", "--nodes", "2", "--slots", "2", "--bandwidth", f"{RATE_MBIT}mbit", "--dir", directory)
    assert up.returncode == 0, up.stdout + up.stderr
    yield directory
    down = cluster("down", "--dir", directory)
    assert down.returncode == 0, down.stderr
    assert leftovers(directory) == []


def test_up_then_down_leaves_nothing_even_after_a_half_finished_up(tmp_path):
    directory = str(tmp_path / "c")
    assert cluster("down", "--dir", directory).returncode == 0
    up = cluster("up", "--nodes", "2", "--bandwidth", "1gbit", "--dir", directory)
    assert up.returncode == 0, up.stdout + up.stderr
    for node in ("node1", "node2"):
        ssh = subprocess.run(["ssh", node, "hostname"], capture_output=True, text=True, timeout=30)
        assert ssh.stdout.strip() == node, ssh.stderr
    again = cluster("up", "--nodes", "2", "--bandwidth", "1gbit", "--dir", directory)
    assert again.returncode == 1 and "already up" in again.stderr
    with open(os.path.join(directory, "hostfile")) as handle:
        assert handle.read() == "node1 slots=1\nnode2 slots=1\n"

    # What a crash half-way through 'up' leaves: the record lost, a namespace with a process in it.
    os.remove(os.path.join(directory, "cluster.json"))
    subprocess.run(["ip", "netns", "add", "hvdkit-node3"], check=True)
    stray = subprocess.Popen(["ip", "netns", "exec", "hvdkit-node3", "sleep", "300"], start_new_session=True)
    assert cluster("down", "--dir", directory).returncode == 0
    assert stray.wait(timeout=10) != 0
    assert leftovers(directory) == []
    assert cluster("down", "--dir", directory).returncode == 0  # idempotent


def test_bad_values_are_refused_before_anything_is_made(tmp_path):
    for flags, message in ((["--nodes", "0", "--bandwidth", "1gbit"], "--nodes 0"),
                           (["--nodes", "2", "--bandwidth", "fast"], "--bandwidth 'fast'"),
                           (["--nodes", "2", "--bandwidth", "1gbit", "--latency", "5"], "netem")):
        done = cluster("up", *flags, "--dir", str(tmp_path / "c"))
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert leftovers(str(tmp_path / "c")) == []


def test_a_plain_tcp_transfer_between_nodes_runs_at_the_configured_rate(two_nodes):
    seconds = 2.0
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", "hvdkit-node2", sys.executable, "-c",
         "import socket,time;s=socket.create_server(('0.0.0.0',5301));print(1,flush=True);c,_=s.accept();"
         "n=0;t=None\nwhile (b:=c.recv(1<<20)):\n t=t or time.perf_counter();n+=len(b)\n"
         "print(n*8/(time.perf_counter()-t)/1e6)"], stdout=subprocess.PIPE, text=True)
    receiver.stdout.readline()
    subprocess.run(["ip", "netns", "exec", "hvdkit-node1", sys.executable, "-c",
                    f"import socket,time;c=socket.create_connection(('node2',5301));e=time.time()+{seconds}\n"
                    "while time.time()<e: c.sendall(bytes(1<<20))"], check=True, timeout=30)
    rate = float(receiver.communicate(timeout=30)[0].strip())
    assert 0.8 * RATE_MBIT <= rate <= 1.2 * RATE_MBIT, f"{rate:.0f} Mbit/s on a {RATE_MBIT} Mbit/s link"


def test_status_names_every_node_and_measures_the_link(two_nodes):
    status = cluster("status", "--dir", two_nodes)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "node1    10.213.7.1     running  ok    1/1 nodes" in status.stdout
    assert "node2    10.213.7.2     running  ok    1/1 nodes" in status.stdout
    assert "node1 -> node2 TCP stream" in status.stdout


RANK_LINE = re.compile(r'(\[\d+, "node.*\])$')  # after horovodrun's "[1]<stdout>:" prefix, if any
TOPOLOGY = ("import json, socket, horovod.torch as hvd; hvd.init(); print(json.dumps([hvd.rank(), "
            "socket.gethostname(), hvd.local_rank(), hvd.local_size(), hvd.cross_rank(), hvd.cross_size()]))")


@pytest.mark.parametrize("launcher", ["--mpi", "--gloo"])
def test_ranks_see_two_nodes_of_two(two_nodes, launcher):
    done = run_hvdkit(["run", launcher, "-np", "4", "-H", "node1:2,node2:2", "--", sys.executable, "-c", TOPOLOGY],
                      timeout=180, env={"HVDKIT_CLUSTER_DIR": two_nodes})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    seen = sorted(json.loads(found[0]) for found in map(RANK_LINE.findall, done.stdout.splitlines()) if found)
    assert seen == [[0, "node1", 0, 2, 0, 2], [1, "node1", 1, 2, 0, 2],
                    [2, "node2", 0, 2, 1, 2], [3, "node2", 1, 2, 1, 2]]


def test_training_across_two_nodes_equals_training_on_one(two_nodes, tmp_path):
    flags = ["--epochs", "2", "--seed", "3"]
    local = run_hvdkit(["train", "-np", "2", "--log-dir", str(tmp_path / "local"), *flags], timeout=300)
    assert local.returncode == 0, local.stderr[-2000:]
    started = time.monotonic()
    nodes = run_hvdkit(["train", "-np", "2", "-H", "node1:1,node2:1", "--log-dir", str(tmp_path / "nodes"), *flags],
                       timeout=300, env={"HVDKIT_CLUSTER_DIR": two_nodes})
    assert nodes.returncode == 0, nodes.stderr[-2000:]

    def learning(log_dir):
        with open(log_dir / "metrics.jsonl") as handle:
            return [(r["epoch"], r["loss"], r["test_accuracy"]) for r in map(json.loads, handle)]

    assert learning(tmp_path / "nodes") == learning(tmp_path / "local"), f"took {time.monotonic() - started:.0f} s"
    # parameter servers: one launch per worker on its node, the servers on the bridge; sync is allreduce's arithmetic
    ps = run_hvdkit(["train", "-np", "2", "-H", "node1:1,node2:1", "--mode", "ps", "--log-dir", str(tmp_path / "ps"),
                     *flags], timeout=300, env={"HVDKIT_CLUSTER_DIR": two_nodes})
    assert ps.returncode == 0, ps.stderr[-2000:]
    assert "2 workers on 2 node(s)" in ps.stdout
    assert [(e, pytest.approx(loss, rel=1e-5), acc) for e, loss, acc in learning(tmp_path / "ps")] == \
        learning(tmp_path / "local")


def job_processes(directory):
    """``{node: [pid, ...]}`` of what runs in each node besides its sshd (read from ``ip netns pids``)."""
    with open(os.path.join(directory, "cluster.json")) as handle:
        sshd = set(json.load(handle)["sshd"].values())
    found = {}
    for node in ("node1", "node2"):
        pids = subprocess.run(["ip", "netns", "pids", f"hvdkit-{node}"], capture_output=True, text=True).stdout
        found[node] = sorted(int(pid) for pid in pids.split() if int(pid) not in sshd)
    return found


def ranks_in(directory, node):
    """The rank wrappers and ranks running on ``node`` (not Open MPI's daemon or its ssh session)."""
    pids = []
    for pid in job_processes(directory)[node]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"hvdkit" in handle.read():
                    pids.append(pid)
        except FileNotFoundError:
            continue
    return pids


def start_training(directory, log_dir, hosts, np, launcher="--mpi"):
    """``hvdkit train`` across the nodes in a session of its own; returns once an epoch has ended."""
    proc = subprocess.Popen([sys.executable, "-m", "hvdkit", "train", launcher, "-np", str(np), "-H", hosts,
                             "--epochs", "500", "--log-dir", str(log_dir), "--checkpoint", str(log_dir / "ckpt")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, HVDKIT_CLUSTER_DIR=directory))
    deadline = time.monotonic() + 120
    while not (log_dir / "metrics.jsonl").exists() or not (log_dir / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.5)
    return proc


def wait_until_gone(directory, seconds):
    deadline = time.monotonic() + seconds
    while any(job_processes(directory).values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return job_processes(directory)


def test_a_node_losing_all_its_ranks_ends_the_job_naming_the_node(two_nodes, tmp_path):
    proc = start_training(two_nodes, tmp_path, "node1:2,node2:2", 4)
    victims = ranks_in(two_nodes, "node2")
    assert len(victims) == 4, victims  # two wrappers, two ranks
    for pid in victims:
        os.kill(pid, 9)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "ranks 2, 3 on node2 ended without a word" in stderr, stderr[-2000:]
    assert wait_until_gone(two_nodes, 10) == {"node1": [], "node2": []}


@pytest.mark.parametrize("launcher", ["--mpi", "--gloo"])
def test_killing_the_launcher_ends_every_rank_on_every_node(two_nodes, tmp_path, launcher):
    proc = start_training(two_nodes, tmp_path, "node1:1,node2:1", 2, launcher)
    checkpoints = tmp_path / "ckpt"
    os.killpg(proc.pid, 9)  # the launcher's whole group, as a user's kill -9 -PGID does
    killed = time.monotonic()
    left = wait_until_gone(two_nodes, 10)
    assert left == {"node1": [], "node2": []}, f"still running {time.monotonic() - killed:.1f} s later: {left}"
    before = {path.name: path.stat().st_mtime_ns for path in checkpoints.rglob("*")}
    time.sleep(2)
    assert {path.name: path.stat().st_mtime_ns for path in checkpoints.rglob("*")} == before


CUT_END_LIMIT = 90  # s: ssh's keep-alive gives up after 15 s, then the launchers end the job


def test_a_cut_link_ends_the_job_naming_the_node(two_nodes, tmp_path):
    from hvdkit.runtime.cluster import net
    from hvdkit.runtime.cluster.layout import NODE_INTERFACE

    proc = start_training(two_nodes, tmp_path, "node1:1,node2:1", 2)
    net.set_link("hvdkit-node2", NODE_INTERFACE, up=False)  # the cable pulled: no goodbye from either side
    cut = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=CUT_END_LIMIT)
    finally:
        net.set_link("hvdkit-node2", NODE_INTERFACE, up=True)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    print(f"the job ended {time.monotonic() - cut:.1f} s after the cut:\n{stderr[-2000:]}")
    assert proc.returncode != 0
    assert "node2" in stderr.splitlines()[-1], stderr[-2000:]
    assert wait_until_gone(two_nodes, 30) == {"node1": [], "node2": []}
