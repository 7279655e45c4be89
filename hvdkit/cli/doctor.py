"""Report the environment hvdkit runs in, for bug reports.

Prints versions (Python, hvdkit, torch, TensorFlow, Horovod, mpi4py), the MPI
implementation, what Horovod was built with (frameworks, controllers, tensor
operations), whether ``hvdkit._C`` loaded and with which backends, and the
CPUs and GPUs. Exits non-zero, with one line per problem, when something
required is missing.
"""
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys

from hvdkit.runtime import tf_log


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


class Report:
    """Ordered ``name -> value`` rows plus the problems found on the way."""

    __slots__ = ("rows", "problems")

    def __init__(self):
        self.rows = {}  # what is printed, in insertion order
        self.problems = []  # one line per missing required piece; non-empty means exit 1

    def add(self, name, value):
        self.rows[name] = value

    def require(self, name, value, ok, fix):
        """Record a row that must be present; ``fix`` says how to provide it."""
        self.rows[name] = value
        if not ok:
            self.problems.append(f"{name}: {value} -- {fix}")


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


SETUP_FIX = "run 'make setup' (scripts/setup.sh)"


def check_versions(report):
    from hvdkit import __version__

    report.add("python", f"{platform.python_version()} ({sys.executable})")
    report.add("platform", platform.platform())
    report.add("hvdkit", __version__)
    for label, dist in (("torch", "torch"), ("tensorflow", None), ("horovod", "horovod"), ("mpi4py", "mpi4py")):
        version = package_version(dist) if dist else (package_version("tensorflow-cpu") or package_version("tensorflow"))
        report.require(label, version or "not installed", version is not None, SETUP_FIX)
    report.add("keras", package_version("keras") or "not installed")


def check_mpi(report):
    mpirun = shutil.which("mpirun")
    version = first_line(["mpirun", "--version"]) if mpirun else None
    report.require("mpirun", f"{version} ({mpirun})" if version else "not found", version is not None,
                   "install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev)")
    try:
        import mpi4py

        mpi4py.rc.initialize = False  # only ask the library's version: no MPI_Init here
        from mpi4py import MPI

        report.add("mpi4py library", MPI.Get_library_version().strip("\x00 \n").splitlines()[0])
    except Exception as err:  # noqa: BLE001  (any failure is the finding itself)
        report.require("mpi4py library", f"unavailable ({err})", False, SETUP_FIX)


def check_horovod(report):
    try:
        from horovod.common.util import extension_available
        import horovod.torch as hvd_torch
    except Exception as err:  # noqa: BLE001
        report.require("horovod build", f"horovod.torch does not import ({err})", False, SETUP_FIX)
        return
    frameworks = {name: extension_available(name) for name in ("torch", "tensorflow", "mxnet")}
    report.add("horovod frameworks", ", ".join(n for n, ok in frameworks.items() if ok) or "none")
    controllers = {"mpi": hvd_torch.mpi_built(), "gloo": hvd_torch.gloo_built()}
    report.add("horovod controllers", ", ".join(n for n, ok in controllers.items() if ok) or "none")
    operations = {"nccl": hvd_torch.nccl_built(), "ddl": hvd_torch.ddl_built(), "ccl": hvd_torch.ccl_built(),
                  "cuda": hvd_torch.cuda_built(), "rocm": hvd_torch.rocm_built()}
    report.add("horovod tensor operations",
               ", ".join(["mpi"] * controllers["mpi"] + ["gloo"] * controllers["gloo"]
                         + [name for name, ok in operations.items() if ok]))
    report.add("horovod build", horovod_build_key())
    for name in ("torch", "tensorflow"):
        if not frameworks[name]:
            report.problems.append(f"horovod frameworks: built without {name} -- {SETUP_FIX}")
    for name, ok in controllers.items():
        if not ok:
            report.problems.append(f"horovod controllers: built without {name} -- {SETUP_FIX}")


def horovod_build_key():
    """The key scripts/build_horovod.sh left in the environment (versions and a hash of its
    fixes), or what a Horovod from elsewhere lacks."""
    try:
        with open(os.path.join(sys.prefix, ".horovod-key")) as f:
            return f.read().strip()
    except OSError:
        return ("not built by hvdkit's scripts/build_horovod.sh: its fixes may be missing "
                "(under --gloo a rank that skips a collective is then never reported)")


def check_extension(report):
    """hvdkit's kernels: the torch extension ``hvdkit._C`` and the TensorFlow op library."""
    for label, module in (("hvdkit._C backends", "hvdkit.ops"), ("hvdkit._tf_ops backends", "hvdkit.kernels.tf_ops")):
        try:
            backends = importlib.import_module(module).backends()
        except Exception as err:  # noqa: BLE001
            report.require(label, f"not loaded ({err})", False, SETUP_FIX)
            continue
        loaded = backends.get("cpu", False)
        detail = ", ".join(name for name in ("cpu", "cuda") if backends.get(name) is True)
        if loaded and backends.get("cpu_isa"):
            detail += f" (cpu kernels: {backends['cpu_isa']})"
        if not loaded:
            detail = f"not loaded ({backends.get('error')})"
        report.require(label, detail, loaded, "rebuild with 'pip install --no-build-isolation -e .'")


def check_hardware(report):
    report.add("cpus", f"{os.cpu_count()} (torch threads: {_torch_threads()})")
    gpus = []
    try:
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        report.add("torch cuda", torch.version.cuda or "none (CPU build)")
    except Exception as err:  # noqa: BLE001
        report.add("torch cuda", f"unavailable ({err})")
    report.add("gpus", ", ".join(gpus) if gpus else "none")


def _torch_threads():
    try:
        import torch

        return torch.get_num_threads()
    except Exception:  # noqa: BLE001
        return "?"


def collect():
    report = Report()
    for check in (check_versions, check_mpi, check_horovod, check_extension, check_hardware):
        check(report)
    return report


def main(args):
    with tf_log.filtered_stderr():  # the checks import TensorFlow, here and in Horovod's forked probes
        report = collect()
    if args.json:
        print(json.dumps({"report": report.rows, "problems": report.problems}, indent=2))
    else:
        width = max(len(name) for name in report.rows)
        for name, value in report.rows.items():
            print(f"{name:<{width}} : {value}")
        for problem in report.problems:
            print(f"MISSING {problem}", file=sys.stderr)
        print("status: " + ("OK" if not report.problems else f"{len(report.problems)} problem(s)"))
    return 1 if report.problems else 0
