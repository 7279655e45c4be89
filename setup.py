"""Build hvdkit and its C++/CUDA extension ``hvdkit._C``.

The extension is compiled against the torch installed in the environment
(install with ``pip install --no-build-isolation -e .``; ``scripts/setup.sh``
does this). CUDA sources are compiled only when that torch is a CUDA build and
a CUDA toolkit is found, so the same tree builds on CPU-only machines.
"""
import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(glob.glob(os.path.join("csrc", pattern), recursive=True))


def _extensions():
    import torch
    from torch.utils import cpp_extension

    # Portable baseline: wider instruction sets are chosen at run time inside
    # the kernels (csrc/cpu/isa/), never with -march=native (images run on
    # other CPUs). No FMA contraction and no fast-math: kernels must match
    # their pure-torch references bit for bit.
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-DHVDKIT_TORCH_BINDING"]
    sources = _sources("core/**/*.cpp") + _sources("cpu/**/*.cpp") + _sources("torch/**/*.cpp")
    use_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and os.environ.get("HVDKIT_WITHOUT_CUDA", "0") != "1"
    )
    kwargs = dict(
        name="hvdkit._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
    if use_cuda:
        kwargs["sources"] += _sources("cuda/**/*.cu")
        kwargs["extra_compile_args"]["cxx"].append("-DHVDKIT_WITH_CUDA")
        # --fmad=false and no --use_fast_math for the same bit-exactness reason.
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-std=c++17", "-DHVDKIT_WITH_CUDA", "--fmad=false"]
        return [cpp_extension.CUDAExtension(**kwargs)], cpp_extension.BuildExtension
    return [cpp_extension.CppExtension(**kwargs)], cpp_extension.BuildExtension


def _version():
    about = {}
    with open(os.path.join(HERE, "hvdkit", "_version.py")) as f:
        exec(f.read(), about)
    return about["__version__"]


ext_modules, build_ext = _extensions()

setup(
    name="hvdkit",
    version=_version(),
    description="Data-parallel training on Horovod with gradient compression, fused buffers and hierarchical averaging",
    packages=find_packages(include=["hvdkit", "hvdkit.*"]),
    python_requires=">=3.10",
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    entry_points={"console_scripts": ["hvdkit = hvdkit.cli:main"]},
)
