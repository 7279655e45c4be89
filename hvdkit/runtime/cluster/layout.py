"""The names and addresses of an emulated cluster, derived from its size alone.

Everything ``hvdkit cluster up`` makes is named here, so ``down`` can find it
again by name even when the record of what was made is lost (a crash half-way
through ``up``). Addresses come from one private test subnet; the bridge in the
root namespace (where launchers run, like a cluster's login node) takes the
last host address, the nodes take 1..N.
"""
import dataclasses
import ipaddress
import os

from hvdkit.errors import UsageError

PREFIX = "hvdkit"                 # every namespace, link and the bridge start with this
SUBNET = "10.213.7.0/24"          # a private test subnet; nothing outside the namespaces uses it
# The bridge in the root namespace (the "login node" where launchers run) and every node's end
# of its link share one name, as a cluster's hosts share a NIC name: horovodrun keeps the
# interfaces common to all hosts and takes its driver's address from the same name on the
# launching host, so with eth0 in the nodes it would hand out the machine's own eth0 address,
# which the nodes cannot reach.
BRIDGE = NODE_INTERFACE = "hvdkit0"
DEFAULT_DIR = "/tmp/hvdkit-cluster"
MAX_NODES = 64
RATE_UNITS = {"kbit": 1e-3, "mbit": 1.0, "gbit": 1e3}


def parse_rate(text):
    """``"1gbit"``, ``"100mbit"``, ``"2.5gbit"`` -> Mbit/s (a float)."""
    value = str(text).strip().lower()
    for unit, scale in RATE_UNITS.items():
        if value.endswith(unit):
            number = value[: -len(unit)]
            try:
                rate = float(number) * scale
            except ValueError:
                break
            if rate <= 0:
                break
            return rate
    raise UsageError(f"--bandwidth {text!r} is not a rate; expected a positive number with a unit "
                     f"({', '.join(RATE_UNITS)}), e.g. 1gbit or 100mbit")


@dataclasses.dataclass(frozen=True)
class Layout:
    nodes: int
    slots: int
    rate_mbit: float
    directory: str = DEFAULT_DIR

    def __post_init__(self):
        if not 1 <= self.nodes <= MAX_NODES:
            raise UsageError(f"--nodes {self.nodes}: expected 1..{MAX_NODES}")
        if self.slots < 1:
            raise UsageError(f"--slots {self.slots}: expected >= 1 (ranks each node can run)")
        if not self.rate_mbit > 0:
            raise UsageError(f"--bandwidth {self.rate_mbit} Mbit/s: expected a positive rate")
        if not os.path.isabs(self.directory):
            object.__setattr__(self, "directory", os.path.abspath(self.directory))

    @property
    def hostnames(self):
        return [f"node{i}" for i in range(1, self.nodes + 1)]

    def namespace(self, node):
        return f"{PREFIX}-{node}"

    def root_link(self, node):
        """The bridge's end of a node's veth pair (in the root namespace)."""
        return f"{PREFIX}-{node}"[:15]

    def address(self, node):
        index = self.hostnames.index(node) + 1
        return str(ipaddress.ip_network(SUBNET)[index])

    @property
    def bridge_address(self):
        return str(ipaddress.ip_network(SUBNET)[-2])

    @property
    def prefix_length(self):
        return ipaddress.ip_network(SUBNET).prefixlen

    def path(self, name):
        return os.path.join(self.directory, name)

    def hostfile(self):
        """Open MPI's hostfile format: one ``host slots=S`` line per node."""
        return "".join(f"{node} slots={self.slots}\n" for node in self.hostnames)

    def host_list(self, slots=None):
        """``node1:S,node2:S,...`` for ``-H`` of mpirun, horovodrun and ``hvdkit run``."""
        return ",".join(f"{node}:{slots or self.slots}" for node in self.hostnames)
