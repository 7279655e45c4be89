"""Namespaces, a bridge and shaped veth links: the emulated cluster's network.

Each node is a network namespace joined to one bridge in the root namespace by
a veth pair. Both ends of every pair are shaped with a token bucket (``tbf``),
so a node's outgoing and incoming traffic each see the configured rate, as on a
switched network where every host has one NIC of that speed. The kernel here
has no ``netem``, so no delay can be added (see :func:`shaping`).
"""
import os
import shlex
import shutil
import subprocess

from hvdkit.errors import UsageError

TCP_RETRIES = 6
HZ = 250  # the kernel's timer rate bounds how often tbf refills: the bucket must hold one tick's worth


class CommandFailed(RuntimeError):
    pass


def run(*cmd, check=True):
    """Run ``ip``/``tc``; a failure raises with the command and what it printed."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode:
        raise CommandFailed(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def in_namespace(namespace, *cmd, check=True):
    return run("ip", "netns", "exec", namespace, *cmd, check=check)


def shaping(rate_mbit):
    """``tc`` arguments of one link end's token bucket.

    The burst holds 4 timer ticks of traffic and at least 512 KiB: more than
    the 64 KiB segments veth's offloads hand over (a packet bigger than the
    bucket is dropped forever), and enough that the kernel's timer, not the
    bucket, never starves a TCP stream. The queue holds 100 ms at the rate, so
    TCP fills the pipe without loss-driven back-off. With these a TCP stream
    carries 0.96 of the rate, both directions at once.
    """
    bytes_per_second = rate_mbit * 1e6 / 8
    burst = max(512 * 1024, int(4 * bytes_per_second / HZ))
    return ["tbf", "rate", f"{rate_mbit:g}mbit", "burst", str(burst), "latency", "100ms"]


def namespaces():
    return [line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line.strip()]


def links():
    out = run("ip", "-o", "link", "show").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def make_bridge(name, address, prefix_length):
    run("ip", "link", "add", name, "type", "bridge")
    run("ip", "addr", "add", f"{address}/{prefix_length}", "dev", name)
    run("ip", "link", "set", name, "up")


def make_node(namespace, root_link, bridge, interface, address, prefix_length, rate_mbit):
    """A namespace with loopback up and one shaped veth pair to the bridge."""
    run("ip", "netns", "add", namespace)
    peer = f"{root_link[:12]}-n"
    run("ip", "link", "add", root_link, "type", "veth", "peer", "name", peer)
    run("ip", "link", "set", peer, "netns", namespace)
    in_namespace(namespace, "ip", "link", "set", peer, "name", interface)
    in_namespace(namespace, "ip", "addr", "add", f"{address}/{prefix_length}", "dev", interface)
    in_namespace(namespace, "ip", "link", "set", interface, "up")
    in_namespace(namespace, "ip", "link", "set", "lo", "up")
    # A cut link must fail a job, not hang it: with Linux's default of 15 retransmissions a
    # sender waits ~15 minutes before giving up; 6 give up after ~13 s of silence (per namespace).
    in_namespace(namespace, "sysctl", "-q", "-w", f"net.ipv4.tcp_retries2={TCP_RETRIES}")
    run("ip", "link", "set", root_link, "master", bridge)
    run("ip", "link", "set", root_link, "up")
    shape(namespace, root_link, interface, rate_mbit)


def shape(namespace, root_link, interface, rate_mbit):
    """Set both ends of a node's link to ``rate_mbit`` (also on a running cluster)."""
    run("tc", "qdisc", "replace", "dev", root_link, "root", *shaping(rate_mbit))
    in_namespace(namespace, "tc", "qdisc", "replace", "dev", interface, "root", *shaping(rate_mbit))


def forwarding_rule(bridge):
    """iptables arguments that let the nodes talk through the bridge.

    With ``br_netfilter`` loaded, bridged packets pass iptables' FORWARD
    chain, whose policy Docker sets to DROP: without this rule the nodes reach
    the root namespace but not each other.
    """
    return ["FORWARD", "-i", bridge, "-o", bridge, "-m", "comment", "--comment", "hvdkit-cluster", "-j", "ACCEPT"]


def allow_forwarding(bridge):
    if shutil.which("iptables") and run("iptables", "-C", *forwarding_rule(bridge), check=False).returncode:
        run("iptables", "-I", *forwarding_rule(bridge))


def remove_forwarding():
    """Every rule ``allow_forwarding`` made, whatever bridge it named (found by its comment)."""
    if not shutil.which("iptables"):
        return
    for rule in run("iptables", "-S", "FORWARD").stdout.splitlines():
        if "hvdkit-cluster" in rule and rule.startswith("-A FORWARD "):
            run("iptables", "-D", *shlex.split(rule)[1:], check=False)


def set_link(namespace, interface, up):
    """Take a node's link down (a cut cable) or bring it back."""
    in_namespace(namespace, "ip", "link", "set", interface, "up" if up else "down")


def remove_namespace(namespace):
    """Deleting a namespace deletes its end of the veth pair, and with it the pair."""
    run("ip", "netns", "delete", namespace, check=False)


def remove_link(name):
    run("ip", "link", "delete", name, check=False)


def check_tools():
    """Root and iproute2's ``ip``/``tc``, or a UsageError naming what is missing."""
    missing = [tool for tool in ("ip", "tc", "unshare") if shutil.which(tool) is None]
    if missing:
        raise UsageError(f"hvdkit cluster needs {', '.join(missing)} (Debian: apt-get install iproute2 util-linux)")
    if os.geteuid() != 0:
        raise UsageError("hvdkit cluster needs root: it creates network namespaces, links and traffic shaping")
