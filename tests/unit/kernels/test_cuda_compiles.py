"""Every CUDA source compiles with this machine's nvcc (no GPU needed), and the
check really fails when one does not."""
import os
import shutil
import subprocess

import pytest
import paths  # tests/support

REPO = paths.REPO
SCRIPT = REPO / "scripts" / "check_cuda.sh"
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed")


def run_check(*args):
    # One architecture (Hopper, the GPU the kernels are tuned on) finds every source error; the GPU check
    # (benchmarks/gpu_check.sh) compiles the others too.
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NVCC": NVCC, "HVDKIT_CUDA_ARCHS": "90"})


def test_every_cuda_source_compiles():
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    for source in sorted((REPO / "csrc" / "cuda").glob("*.cu")):
        assert f"ok      {source.name}" in result.stdout


def test_check_fails_and_names_a_source_that_does_not_compile(tmp_path):
    (tmp_path / "good.cu").write_text('#include "core/counter_hash.h"\n__global__ void k(unsigned* x) { *x = hvdkit::mix32(*x); }\n')
    (tmp_path / "broken.cu").write_text("__global__ void k(float* x) { *x = undeclared_name; }\n")
    result = run_check(str(tmp_path))
    assert result.returncode != 0
    assert "FAILED  broken.cu" in result.stderr and "undeclared_name" in result.stderr
    assert "ok      good.cu" in result.stdout
