"""An emulated multi-node cluster on one machine: ``hvdkit cluster up|status|down``.

N network namespaces are the hosts ``node1``..``nodeN``, each with its own
hostname and sshd, joined to one bridge by shaped links. ``up`` writes a
hostfile and an ssh config into the cluster directory and makes the names
resolve, so ``mpirun --hostfile``, ``horovodrun -H`` and ``hvdkit run -H``
reach the nodes unchanged, as on a real cluster. ``down`` removes everything
``up`` made, by the pids recorded and by name, also after a crash or a
half-finished ``up``.
"""
import dataclasses
import json
import os
import shutil
import signal
import time

from hvdkit.runtime.cluster import names, net, sshd, tuning
from hvdkit.runtime.cluster.layout import BRIDGE, NODE_INTERFACE, PREFIX, Layout

RECORD = "cluster.json"
SSHD_START_SECONDS = 10.0
HOROVODRUN_CACHE = os.path.expanduser("~/.horovod/cache.bin")


def _save(layout, record):
    path = layout.path(RECORD)
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle, indent=1)
    os.replace(path + ".tmp", path)


def load(directory):
    """The record of the cluster made in ``directory``, or None."""
    try:
        with open(os.path.join(directory, RECORD)) as handle:
            record = json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    record["layout"] = Layout(**record["layout"])
    return record


def _wait_for_ssh(layout):
    """Until ``ssh nodeN true`` works for every node (sshd listening, keys accepted)."""
    import subprocess

    config = layout.path("ssh/ssh_config")
    deadline = time.monotonic() + SSHD_START_SECONDS
    pending = list(layout.hostnames)
    while pending:
        node = pending[0]
        done = subprocess.run(["ssh", "-F", config, node, "true"], capture_output=True, text=True)
        if done.returncode == 0:
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise net.CommandFailed(f"sshd on {node} did not accept a login within {SSHD_START_SECONDS:g} s: "
                                    f"{done.stderr.strip()} (log: {layout.path('run/sshd-' + node + '.log')})")
        time.sleep(0.1)


def up(layout):
    """Make the cluster; on any failure, remove what was made and re-raise."""
    net.check_tools()
    sshd.check_tools()
    existing = [ns for ns in net.namespaces() if ns.startswith(PREFIX + "-")]
    if existing or BRIDGE in net.links():
        raise net.CommandFailed(f"a cluster is already up ({', '.join(existing) or BRIDGE}); "
                                "run 'hvdkit cluster down' first")
    os.makedirs(layout.path("run"), exist_ok=True)
    record = {"layout": layout.__dict__, "sshd": {}}
    _save(layout, record)
    try:
        net.make_bridge(BRIDGE, layout.bridge_address, layout.prefix_length)
        net.allow_forwarding(BRIDGE)
        ssh_dir = layout.path("ssh")
        sshd.make_keys(ssh_dir)
        for node in layout.hostnames:
            net.make_node(layout.namespace(node), layout.namespace(node), BRIDGE, NODE_INTERFACE,
                          layout.address(node), layout.prefix_length, layout.rate_mbit)
            config = layout.path(f"run/sshd-{node}.conf")
            with open(config, "w") as handle:
                handle.write(sshd.server_config(ssh_dir, layout.path(f"run/sshd-{node}.pid")))
            record["sshd"][node] = sshd.start(layout.namespace(node), node, config,
                                              layout.path(f"run/sshd-{node}.log"))
            _save(layout, record)
        with open(os.path.join(ssh_dir, "ssh_config"), "w") as handle:
            handle.write(sshd.client_config(layout, ssh_dir))
        with open(layout.path("hostfile"), "w") as handle:
            handle.write(layout.hostfile())
        with open(layout.path("env"), "w") as handle:
            handle.write(tuning.env_file_text(layout.directory))
        names.add_hosts(layout)
        names.add_ssh_include(os.path.join(ssh_dir, "ssh_config"))
        forget_horovodrun_checks()
        _wait_for_ssh(layout)
    except BaseException:
        down(layout.directory)
        raise
    return record


def reshape(directory, rate_mbit):
    """Change every link of the running cluster in ``directory`` to ``rate_mbit``."""
    record = load(directory)
    if record is None:
        raise net.CommandFailed(f"no cluster is up in {directory}")
    layout = dataclasses.replace(record["layout"], rate_mbit=rate_mbit)
    for node in layout.hostnames:
        net.shape(layout.namespace(node), layout.namespace(node), NODE_INTERFACE, rate_mbit)
    record["layout"] = layout.__dict__
    _save(layout, record)
    return layout


def forget_horovodrun_checks():
    """horovodrun caches, for an hour, which interfaces its hosts share; entries from an
    earlier cluster would name interfaces the nodes no longer have."""
    try:
        os.remove(HOROVODRUN_CACHE)
    except FileNotFoundError:
        pass


def _kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def namespace_pids(namespace):
    out = net.run("ip", "netns", "pids", namespace, check=False).stdout
    return [int(pid) for pid in out.split()]


def down(directory):
    """Remove every namespace, link, process, name and file of the cluster; returns what was removed.

    Works from the record when there is one, and by name always: processes
    still inside a ``hvdkit-*`` namespace (sshd, ranks, daemons), the
    namespaces, the bridge and any ``hvdkit*`` link left over.
    """
    removed = []
    record = load(directory) or {"sshd": {}}
    _kill(record["sshd"].values())
    namespaces = [ns for ns in net.namespaces() if ns.startswith(PREFIX + "-")]
    for namespace in namespaces:
        _kill(namespace_pids(namespace))
    for namespace in namespaces:
        net.remove_namespace(namespace)
        removed.append(f"namespace {namespace}")
    for link in net.links():
        if link.startswith(PREFIX):
            net.remove_link(link)
            removed.append(f"link {link}")
    net.remove_forwarding()
    names.remove_all()
    forget_horovodrun_checks()
    for name in ("ssh", "run", "hostfile", "env", RECORD):
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    if os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)
    return removed
