"""Build hvdkit and its C++/CUDA extension ``hvdkit._C``.

The extension is compiled against the torch installed in the environment
(install with ``pip install --no-build-isolation -e .``; ``scripts/setup.sh``
does this). CUDA sources are compiled only when that torch is a CUDA build and
a CUDA toolkit is found, so the same tree builds on CPU-only machines.

When TensorFlow is installed, the same build also makes ``hvdkit._tf_ops``, the
TensorFlow op library (``hvdkit/kernels/tf_ops.py`` loads it), from the same
csrc core and CPU kernels; ``HVDKIT_WITHOUT_TF=1`` skips it.
"""
import glob
import os
import shlex
import subprocess
import sysconfig

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(glob.glob(os.path.join("csrc", pattern), recursive=True))


def _shared_libstdcxx():
    """Link arguments that make the extension use the libstdc++ torch loaded.

    A compiler that ships only the static libstdc++ (a relocatable GCC under
    /opt, as in some CUDA images) would give the extension its own copy, whose
    iostreams are never initialised: the first error message TORCH_CHECK builds
    then segfaults. Such a compiler gets the shared library torch uses, by path.
    """
    compiler = os.environ.get("CXX") or (sysconfig.get_config_var("CXX") or "c++")
    try:
        found = subprocess.run(shlex.split(compiler)[:1] + ["-print-file-name=libstdc++.so"],
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return []
    if os.path.isabs(found):
        return []
    with open("/proc/self/maps") as maps:
        loaded = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    return sorted(loaded)[:1]


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
        extra_link_args=["-fopenmp"] + _shared_libstdcxx(),
    )
    if use_cuda:
        kwargs["sources"] += _sources("cuda/**/*.cu")
        kwargs["extra_compile_args"]["cxx"].append("-DHVDKIT_WITH_CUDA")
        # --fmad=false and no --use_fast_math for the same bit-exactness reason.
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-std=c++17", "-DHVDKIT_WITH_CUDA", "--fmad=false"]
        return [cpp_extension.CUDAExtension(**kwargs)], cpp_extension.BuildExtension
    return [cpp_extension.CppExtension(**kwargs)], cpp_extension.BuildExtension


def _tf_extensions():
    """The TensorFlow op library, compiled with exactly TensorFlow's own flags
    (its C++ ABI setting among them). It is not a Python module: it registers
    ops when ``tf.load_op_library`` opens it. Hidden visibility keeps its copy of
    the kernels from binding to (or replacing) the torch extension's copy when
    both are loaded in one process."""
    if os.environ.get("HVDKIT_WITHOUT_TF", "0") == "1":
        return []
    try:
        import tensorflow as tf
    except ImportError:
        return []
    from setuptools import Extension

    return [Extension(
        name="hvdkit._tf_ops",
        sources=_sources("core/**/*.cpp") + _sources("cpu/**/*.cpp") + _sources("tensorflow/**/*.cc"),
        include_dirs=[os.path.join(HERE, "csrc")],
        # -isystem on TensorFlow's own include folder (also given with -I by its
        # flags) only silences the hundreds of warnings its headers raise.
        extra_compile_args=tf.sysconfig.get_compile_flags() + [
            "-isystem", tf.sysconfig.get_include(), "-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off",
            "-fvisibility=hidden", "-fvisibility-inlines-hidden"],
        extra_link_args=tf.sysconfig.get_link_flags() + ["-fopenmp"] + _shared_libstdcxx(),
    )]


def _separate_tf_objects(build_ext_class):
    """Both extensions compile csrc/core and csrc/cpu, each with its own flags:
    the TensorFlow library's objects go to a folder of their own instead of
    overwriting the torch extension's."""
    class BuildExt(build_ext_class):
        def build_extension(self, ext):
            if ext.name != "hvdkit._tf_ops":
                return super().build_extension(ext)
            shared = self.build_temp
            self.build_temp = os.path.join(shared, "tf_ops")
            try:
                return super().build_extension(ext)
            finally:
                self.build_temp = shared

    return BuildExt


def _version():
    about = {}
    with open(os.path.join(HERE, "hvdkit", "_version.py")) as f:
        exec(f.read(), about)
    return about["__version__"]


ext_modules, build_ext = _extensions()
ext_modules += _tf_extensions()

setup(
    name="hvdkit",
    version=_version(),
    description="Data-parallel training on Horovod with gradient compression, fused buffers and hierarchical averaging",
    packages=find_packages(include=["hvdkit", "hvdkit.*"]),
    python_requires=">=3.10",
    ext_modules=ext_modules,
    cmdclass={"build_ext": _separate_tf_objects(build_ext)},
    entry_points={"console_scripts": ["hvdkit = hvdkit.cli.main:main"]},
)
