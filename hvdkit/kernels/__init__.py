"""Python face of the C++/CUDA kernels in ``csrc/``: torch and TensorFlow wrappers over one set of argument checks."""
