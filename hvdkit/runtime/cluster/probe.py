"""What ``hvdkit cluster status`` measures: who answers, and how fast a link really is.

Reachability is checked the way jobs use the nodes: ``ssh node true`` from the
launching host, and a TCP connection from each node to every other node's
sshd. The point-to-point rate is a plain TCP stream between two nodes' network
namespaces for a fixed time, received and timed on the far side.
"""
import subprocess
import sys
import time

from hvdkit.runtime.cluster import net

RATE_PORT = 5299

_RECEIVER = """
import socket, sys, time
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1]))); server.listen(1); server.settimeout(10)
print("listening", flush=True)
conn, _ = server.accept(); conn.settimeout(30)
buf = bytearray(1 << 20); total = 0; start = None
while True:
    n = conn.recv_into(buf)
    if not n:
        break
    start = start or time.perf_counter()
    total += n
print(total * 8 / (time.perf_counter() - start) / 1e6 if start else 0.0, flush=True)
"""

_SENDER = """
import socket, sys, time
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
data = b"\\0" * (1 << 20); end = time.perf_counter() + float(sys.argv[3])
while time.perf_counter() < end:
    conn.sendall(data)
conn.close()
"""


def ssh_reachable(layout, node):
    done = subprocess.run(["ssh", "-F", layout.path("ssh/ssh_config"), node, "hostname"],
                          capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and done.stdout.strip() == node


def node_reaches(layout, source, target, port=22):
    """A TCP connection from inside ``source`` to ``target``'s sshd."""
    code = f"import socket; socket.create_connection(({layout.address(target)!r}, {port}), timeout=3).close()"
    return net.in_namespace(layout.namespace(source), sys.executable, "-c", code, check=False).returncode == 0


def tcp_rate_mbit(layout, source, target, seconds=1.0):
    """Mbit/s of one TCP stream from ``source`` to ``target`` over ``seconds``."""
    receiver = subprocess.Popen(["ip", "netns", "exec", layout.namespace(target), sys.executable, "-c", _RECEIVER,
                                 str(RATE_PORT)], stdout=subprocess.PIPE, text=True)
    try:
        receiver.stdout.readline()  # "listening"
        net.in_namespace(layout.namespace(source), sys.executable, "-c", _SENDER, layout.address(target),
                         str(RATE_PORT), str(seconds))
        out, _ = receiver.communicate(timeout=30)
        return float(out.strip())
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


def report(layout, record, alive):
    """Lines of the status table, one per node, then the measured rate."""
    lines = [f"cluster in {layout.directory}: {layout.nodes} nodes x {layout.slots} slots, "
             f"links shaped to {layout.rate_mbit:g} Mbit/s",
             f"{'node':8} {'address':14} {'sshd':8} {'ssh':5} reaches"]
    healthy = True
    for node in layout.hostnames:
        sshd_ok = alive(record["sshd"].get(node))
        ssh_ok = sshd_ok and ssh_reachable(layout, node)
        peers = [peer for peer in layout.hostnames if peer != node]
        reached = [peer for peer in peers if node_reaches(layout, node, peer)]
        healthy &= ssh_ok and len(reached) == len(peers)
        lines.append(f"{node:8} {layout.address(node):14} {'running' if sshd_ok else 'DEAD':8} "
                     f"{'ok' if ssh_ok else 'FAIL':5} {len(reached)}/{len(peers)} nodes"
                     + (f" (not {', '.join(sorted(set(peers) - set(reached)))})" if len(reached) < len(peers) else ""))
    if layout.nodes >= 2 and healthy:
        started = time.perf_counter()
        rate = tcp_rate_mbit(layout, "node1", "node2")
        lines.append(f"node1 -> node2 TCP stream: {rate:.0f} Mbit/s "
                     f"({rate / layout.rate_mbit:.2f} of the configured rate, measured over "
                     f"{time.perf_counter() - started:.1f} s)")
    return lines, healthy

