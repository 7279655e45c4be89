"""Make the nodes' names resolve for every tool, as a real cluster's DNS would.

``/etc/hosts`` gets the nodes' addresses and root's ``~/.ssh/config`` includes
the cluster's ssh config, so ``ssh node1``, ``mpirun -H node1:2,...``,
``horovodrun -H ...`` and Gloo's address lookups work with no extra flags.
Each edit is one block between marker lines, rewritten in place (``/etc/hosts``
is often a bind mount that cannot be replaced by a rename) and removed by its
markers on ``down``, whichever cluster directory wrote it.
"""
import os

BEGIN = "# >>> hvdkit cluster >>>"
END = "# <<< hvdkit cluster <<<"
HOSTS_FILE = "/etc/hosts"


def ssh_config_path():
    return os.path.expanduser("~/.ssh/config")


def _without_block(text):
    kept, inside = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith(BEGIN):
            inside = True
        elif line.startswith(END):
            inside = False
        elif not inside:
            kept.append(line)
    return "".join(kept)


def _block(lines):
    return "".join(f"{line}\n" for line in [BEGIN, *lines, END])


def _rewrite(path, text):
    with open(path, "w") as handle:  # in place: keeps a bind-mounted file's inode
        handle.write(text)


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def add_hosts(layout, hosts_file=HOSTS_FILE):
    text = _without_block(_read(hosts_file))
    if text and not text.endswith("\n"):
        text += "\n"
    _rewrite(hosts_file, text + _block(f"{layout.address(node)} {node}" for node in layout.hostnames))


def add_ssh_include(client_config_path, config_path=None):
    """An ``Include`` must come before any ``Host`` block to apply to every host: prepend it."""
    config_path = config_path or ssh_config_path()
    os.makedirs(os.path.dirname(config_path), mode=0o700, exist_ok=True)
    _rewrite(config_path, _block([f"Include {client_config_path}"]) + _without_block(_read(config_path)))
    os.chmod(config_path, 0o600)


def remove_all(hosts_file=HOSTS_FILE, config_path=None):
    """Drop both blocks (a no-op where neither is present)."""
    for path in (hosts_file, config_path or ssh_config_path()):
        text = _read(path)
        if BEGIN in text:
            _rewrite(path, _without_block(text))
