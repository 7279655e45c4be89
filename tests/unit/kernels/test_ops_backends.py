"""hvdkit.ops reports its state and imports even without the extension."""
import os
import subprocess
import sys

import torch

from hvdkit.kernels import torch_ops as ops


def test_backends_reports_a_loaded_cpu_library():
    state = ops.backends()
    assert state["loaded"] and state["error"] is None and state["cpu"]
    assert state["cuda"] == (state["cuda_built"] and torch.cuda.is_available())
    assert state["cpu_isa"] == state["cpu_isas"][0]
    assert state["cpu_isas"][-1] == "scalar"


def test_set_cpu_isa_switches_and_returns_the_previous_one():
    state = ops.backends()
    previous = ops.set_cpu_isa("scalar")
    try:
        assert previous == state["cpu_isa"]
        assert ops.backends()["cpu_isa"] == "scalar"
    finally:
        ops.set_cpu_isa(previous)


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_environment_variable_picks_the_instruction_set():
    result = run_python("from hvdkit import ops; print(ops.backends()['cpu_isa'])", HVDKIT_CPU_ISA="scalar")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "scalar"


def test_import_without_the_extension_fails_only_when_an_op_runs():
    code = "\n".join([
        "import sys, torch",
        "sys.modules['hvdkit._C'] = None  # makes 'from . import _C' raise ImportError",
        "from hvdkit import ops",
        "state = ops.backends()",
        "assert not state['loaded'] and not state['cpu'] and 'hvdkit._C' in state['error'], state",
        "try:",
        "    ops.topk_ef(torch.ones(4), torch.zeros(4), 1)",
        "except RuntimeError as error:",
        "    assert 'hvdkit._C' in str(error), error",
        "    print('raised')",
    ])
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "raised"

