"""What the drop-in modules (``hvdkit.torch``, ``hvdkit.tensorflow``, ``hvdkit.tensorflow.keras``) share.

A Horovod script changes one import, so each drop-in must answer every public
name of its Horovod module: hvdkit's own definitions first, every other name
Horovod's own object (:func:`export_horovod_names`, run at the end of each
drop-in's ``__init__``). ``init`` starts Horovod through hvdkit's topology so
the node process sets exist (:func:`init`).
"""
import importlib
import importlib.util
import inspect
import os
import pkgutil

from hvdkit import topology as _topology

__all__ = ["export_horovod_names", "horovod_attribute", "horovod_public_names", "init"]


def _foreign(value):
    """An import of another library (torch, tf, os, ...) inside a Horovod module, not a Horovod name."""
    if inspect.ismodule(value):
        return not value.__name__.startswith("horovod")
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
        return not (getattr(value, "__module__", None) or "").startswith("horovod")
    return False


def horovod_public_names(horovod):
    """The names of Horovod module ``horovod`` a script may use: public, and Horovod's own."""
    return {name for name, value in vars(horovod).items() if not name.startswith("_") and not _foreign(value)}


def export_horovod_names(horovod, namespace, excluded=()):
    """Copy into ``namespace`` (a drop-in's ``globals()``) every public Horovod name it does not define.

    Names of the drop-in's own submodules are left alone (importing ``hvdkit.torch.elastic`` must give
    hvdkit's module, not Horovod's), and so are ``excluded`` ones (Horovod pieces that do not work on
    today's frameworks). Returns the names copied.
    """
    path = namespace.get("__path__")
    own_submodules = {info.name for info in pkgutil.iter_modules(path)} if path else set()
    skipped = set(namespace) | own_submodules | set(excluded)
    copied = sorted(horovod_public_names(horovod) - skipped)
    for name in copied:
        namespace[name] = getattr(horovod, name)
    return copied


def horovod_attribute(horovod, module_name, name):
    """A drop-in's module ``__getattr__``: its own submodule of that name (imported now, e.g.
    ``hvdkit.tensorflow.keras``), else Horovod's attribute, looked up when asked, so what Horovod gains
    later (a submodule imported after the drop-in was) is answered too."""
    if importlib.util.find_spec(f"{module_name}.{name}") is not None:
        return importlib.import_module(f"{module_name}.{name}")
    # Private names too (Horovod's own suites call hvd._executing_eagerly()); dunders stay this module's.
    if not (name.startswith("__") and name.endswith("__")) and hasattr(horovod, name):
        return getattr(horovod, name)
    raise AttributeError(f"module {module_name!r} has no attribute {name!r}")


def init(horovod, module_name, args, kwargs):
    """A drop-in's ``init(comm=None, process_sets=None)``: Horovod started through hvdkit's topology (its
    node process sets and Horovod settings), with the user's process sets registered beside them, as
    Horovod's ``init`` takes them (a list of ``ProcessSet`` or rank lists; ``"dynamic"`` is Horovod's
    ``HOROVOD_DYNAMIC_PROCESS_SETS=1``: sets added later with ``add_process_set``)."""
    names = ("comm", "process_sets")
    if len(args) > len(names) or set(kwargs) - set(names):
        raise ValueError(f"{module_name}.init() takes comm=None and process_sets=None, got {len(args)} positional "
                         f"and {sorted(kwargs)} keyword arguments")
    given = dict(zip(names, args), **kwargs)
    if given.get("comm") is not None:
        raise ValueError(f"{module_name}.init(comm=...): hvdkit starts Horovod over the launcher's ranks; "
                         f"got comm={given['comm']!r} (use process_sets= for subsets of ranks)")
    process_sets = given.get("process_sets")
    if isinstance(process_sets, str):
        if process_sets != "dynamic":
            raise ValueError(f"{module_name}.init(process_sets={process_sets!r}): expected a list of process "
                             f"sets or 'dynamic'")
        os.environ["HOROVOD_DYNAMIC_PROCESS_SETS"] = "1"  # what Horovod's init does with "dynamic"
        process_sets = None
    return _topology.init(horovod, process_sets)
