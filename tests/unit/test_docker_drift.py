"""No drift between the images and a checkout's set-up.

The Dockerfiles install through ``scripts/setup.sh`` (``system-packages build``
and ``runtime``, then the full set-up), so an image gets what a developer
gets. These tests fail when a Dockerfile installs an apt or pip package that
``scripts/setup.sh`` (its package groups, its own pins) and requirements.txt
do not name, and when a Dockerfile stops going through the set-up script.
The parser is checked on a Dockerfile that does drift, so a parser that finds
nothing cannot pass them.
"""
import json
import pathlib
import re
import shlex

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO / "docker" / "Dockerfile.cpu", REPO / "docker" / "Dockerfile.gpu"]
SETUP = REPO / "scripts" / "setup.sh"
REQUIREMENTS = REPO / "requirements.txt"

# pip options that take a value (the value is not a package).
PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url",
                     "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix", "--root",
                     "--cache-dir", "--cert", "--progress-bar", "-w", "--wheel-dir"}
APT_VALUE_OPTIONS = {"-o", "--option", "-t", "--target-release", "-c", "--config-file"}


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def run_commands(text):
    """The shell commands of every RUN instruction (continuations joined, --mount flags dropped)."""
    joined = re.sub(r"\\\n", " ", text)
    commands = []
    for line in joined.splitlines():
        match = re.match(r"\s*RUN\s+(.*)", line, re.IGNORECASE)
        if not match:
            continue
        body = match.group(1).strip()
        if body.startswith("["):
            body = " ".join(shlex.quote(part) for part in json.loads(body))
        while body.startswith("--"):
            body = body.split(None, 1)[1] if " " in body else ""
        commands.append(body)
    return commands


def simple_commands(shell):
    """Split a shell line into its simple commands (at ;, &&, ||, | outside quotes), each a list of words."""
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for token in list(lexer) + [";"]:
        if token and set(token) <= set(";&|()"):
            # Leading VAR=value assignments are environment, not the command.
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words.pop(0)
            if words:
                yield words
            words = []
        else:
            words.append(token)


def installed(words):
    """("apt", names) or ("pip", names) when ``words`` install packages, else None."""
    tool = pathlib.PurePath(words[0]).name
    if tool in ("apt-get", "apt") and "install" in words:
        kind, rest, value_options = "apt", words[words.index("install") + 1:], APT_VALUE_OPTIONS
    elif tool in ("pip", "pip3") and "install" in words:
        kind, rest, value_options = "pip", words[words.index("install") + 1:], PIP_VALUE_OPTIONS
    elif re.match(r"python[0-9.]*$", tool) and words[1:3] == ["-m", "pip"] and "install" in words:
        kind, rest, value_options = "pip", words[words.index("install") + 1:], PIP_VALUE_OPTIONS
    else:
        return None
    names, skip = [], False
    for word in rest:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in value_options
        elif "/" in word or word.startswith(".") or word.endswith(".whl") or "$" in word:
            continue  # a path, a wheel file or a variable (setup.sh's own group, checked below)
        else:
            names.append(re.split(r"[<>=!~\[;@ ]", word, maxsplit=1)[0])
    return kind, names


def packages_installed(text):
    found = {"apt": set(), "pip": set()}
    for command in run_commands(text):
        for words in simple_commands(command):
            result = installed(words)
            if result:
                found[result[0]].update(result[1])
    return found


def setup_groups():
    text = SETUP.read_text()
    groups = {}
    for name in ("BUILD_PACKAGES", "RUNTIME_PACKAGES"):
        match = re.search(name + r"=\(([^)]*)\)", text)
        assert match, f"scripts/setup.sh no longer defines {name}"
        groups[name] = set(match.group(1).split())
    return groups


def allowed_apt():
    return set().union(*setup_groups().values())


def allowed_pip():
    names = set()
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(normalise(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]))
    for line in SETUP.read_text().splitlines():  # setup.sh's own pins (pip, setuptools, wheel)
        result = installed(line.split()) if line.strip() else None
        if result and result[0] == "pip":
            names.update(normalise(n) for n in result[1])
    return names


def drift(text):
    found = packages_installed(text)
    return (sorted(found["apt"] - allowed_apt()),
            sorted(n for n in found["pip"] if normalise(n) not in allowed_pip()))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_nothing_setup_does_not(path):
    apt, pip = drift(path.read_text())
    assert not apt, f"{path.name} installs apt packages scripts/setup.sh does not name: {apt}"
    assert not pip, f"{path.name} installs pip packages requirements.txt and setup.sh do not name: {pip}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_through_setup_script(path):
    commands = [" ".join(words) for command in run_commands(path.read_text()) for words in simple_commands(command)]
    for wanted in ("bash scripts/setup.sh system-packages build", "bash scripts/setup.sh system-packages runtime",
                   "bash scripts/setup.sh"):
        assert wanted in commands, f"{path.name} no longer runs '{wanted}'"


def test_setup_installs_from_its_own_groups():
    """setup.sh's default path (apt_install of what is missing) stays inside its build group."""
    build = setup_groups()["BUILD_PACKAGES"]
    named = set()
    for match in re.finditer(r"apt_install ([^;|&}\n]+)", SETUP.read_text()):
        named.update(word for word in match.group(1).split() if not word.startswith(("$", '"', "-")))
    assert named, "found no apt_install call in scripts/setup.sh"
    assert named <= build, f"setup.sh installs {sorted(named - build)} outside BUILD_PACKAGES"


def test_drift_is_detected():
    drifting = (
        "FROM debian:bookworm-slim\n"
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\\n"
        "      openmpi-bin curl=7.88 && rm -rf /var/lib/apt/lists/*\n"
        "RUN --mount=type=cache,target=/root/.cache python3 -m pip install -r requirements.txt requests==2.32 torch\n"
        'RUN ["pip", "install", "--no-cache-dir", "Flask[async]>=3"]\n'
    )
    apt, pip = drift(drifting)
    assert apt == ["curl"]
    assert pip == ["Flask", "requests"]
