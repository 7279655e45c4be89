"""Each drop-in module answers every public name of its Horovod module: Horovod's own object, unless hvdkit
defines the name itself. A name a future Horovod adds cannot go missing unnoticed."""
import importlib
import inspect

import pytest

PAIRS = [("horovod.torch", "hvdkit.torch"), ("horovod.tensorflow", "hvdkit.tensorflow"),
         ("horovod.tensorflow.keras", "hvdkit.tensorflow.keras")]
# hvdkit's own definitions (compressed, fused, hierarchical exchange; Keras 3; hvdkit's topology).
REPLACED = {
    "hvdkit.torch": {"init", "DistributedOptimizer", "broadcast_optimizer_state", "Compression", "elastic", "join"},
    "hvdkit.tensorflow": {"init", "DistributedGradientTape", "DistributedOptimizer", "broadcast_variables",
                          "Compression", "keras", "PartialDistributedGradientTape", "SyncBatchNormalization",
                          "sync_batch_norm", "elastic"},
    "hvdkit.tensorflow.keras": {"init", "Compression", "DistributedOptimizer", "callbacks", "load_model", "elastic"},
}
# Horovod pieces that do not work on Keras 3 and that hvdkit does not provide yet.
NOT_PROVIDED = {}


def foreign(value):
    """An import of another library (torch, tf, os, ...) inside a Horovod module, not a Horovod name."""
    if inspect.ismodule(value):
        return not value.__name__.startswith("horovod")
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
        return not (getattr(value, "__module__", None) or "").startswith("horovod")
    return False


def public_names(module):
    return {name for name, value in vars(module).items() if not name.startswith("_") and not foreign(value)}


@pytest.mark.parametrize("horovod_name,hvdkit_name", PAIRS)
def test_every_horovod_name_is_answered(horovod_name, hvdkit_name):
    horovod, ours = importlib.import_module(horovod_name), importlib.import_module(hvdkit_name)
    names = public_names(horovod)
    assert {"rank", "size", "allreduce", "broadcast", "Average"} <= names  # the reference is not empty
    missing = sorted(n for n in names - NOT_PROVIDED.get(hvdkit_name, set()) if not hasattr(ours, n))
    assert not missing, f"{hvdkit_name} lacks {missing}"
    replaced = REPLACED[hvdkit_name]
    shadowed = sorted(n for n in names - replaced - NOT_PROVIDED.get(hvdkit_name, set())
                      if getattr(ours, n) is not getattr(horovod, n))
    assert not shadowed, f"{hvdkit_name} shadows Horovod's {shadowed}"
    for name in replaced & names:
        assert getattr(ours, name) is not getattr(horovod, name), name


def test_private_helpers_horovods_own_suites_call_are_horovods():
    import horovod.tensorflow

    import hvdkit.tensorflow

    assert hvdkit.tensorflow._executing_eagerly is horovod.tensorflow._executing_eagerly
    with pytest.raises(AttributeError, match="has no attribute '_no_such_helper'"):
        hvdkit.tensorflow._no_such_helper  # noqa: B018


def test_hvd_elastic_is_hvdkits_module_with_horovods_names():
    import hvdkit.torch as hvd

    assert hvd.elastic.__name__ == "hvdkit.torch.elastic"
    assert hvd.elastic.TorchState.__module__.startswith("horovod") and callable(hvd.elastic.ElasticState)


def test_own_submodules_win_even_before_they_are_imported():
    import subprocess
    import sys

    code = ("import hvdkit.tensorflow as hvd; "
            "assert hvd.keras.__name__ == 'hvdkit.tensorflow.keras', hvd.keras")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
