"""Atomic checkpoints: a killed writer never leaves a checkpoint that a resume would load half-written.

Layout of a checkpoint directory (``EXT`` is the codec's: ``pt`` for torch, ``tfckpt`` for TensorFlow)::

    ckpt-00000120.EXT              one file per save, named by step (the only writer's, or rank 0's)
    ckpt-00000120.rank-00001.EXT   save_sharded: each rank's own state (error-feedback residuals, RNG, ...)
    latest                         one "NAME SHA256" line per file of the newest complete save

Each file has exactly one writer, which writes a temporary in the same directory, fsyncs it,
``os.replace``-s it into place and fsyncs the directory. ``latest`` is replaced the same way, and only
after every file it names is durable, so it never names a partial checkpoint; a load checks every
checksum it uses. A writer killed mid-save leaves temporaries (``.tmp-*``) and files newer than
``latest``: ``clean_stale`` removes both, at start (``load_sharded`` runs it on rank 0). A directory
that cannot be written (read-only, full, not a directory) raises ``CheckpointError`` naming it, and
``save_sharded``/``load_sharded`` raise on every rank when any rank fails, so no rank is left
waiting in a collective. A rank whose launcher is gone (``hvdkit.runtime.parent_watch``) writes
nothing: it raises ``CheckpointError`` instead, before and after writing its temporary.

All ranks of a sharded checkpoint must see the same directory (one host, or a shared file system).

This module is the one mechanism for both frameworks and imports neither: a :class:`Codec` turns a
payload into the bytes of one file and back, and everything above (temporary, fsync, rename,
checksum, ``latest``, the sharded protocol, cleaning) is shared. ``hvdkit.state.torch_codec``
serialises through ``torch.save``/``torch.load``; ``hvdkit.state.tf_codec`` writes a
``tf.train.Checkpoint`` into TensorFlow's in-memory ``ram://`` file system and packs its files into
one archive, so a TensorFlow save is one file too, atomic and checksummed like a torch one. Each
codec has its own file extension: a directory written by one framework is refused, by name, by the
other. A checkpoint directory is trusted input (the torch codec unpickles it).
"""
import abc
import contextlib
import hashlib
import os
import re

from hvdkit.runtime import parent_watch

__all__ = ["CheckpointError", "Codec", "LATEST", "clean_stale", "file_name", "load_latest", "load_sharded",
           "read_pointer", "save", "save_sharded"]

LATEST = "latest"
TEMP_PREFIX = ".tmp-"
_FILE = re.compile(r"^ckpt-(\d{8,})(?:\.rank-(\d{5,}))?\.([a-z][a-z0-9]*)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or trusted."""


class Codec(abc.ABC):
    """How one framework's payloads become the bytes of one checkpoint file, and back."""

    extension = None  # the file extension of this codec's checkpoints (no dot)
    name = None  # what serialises, for messages (e.g. "torch.save")

    @abc.abstractmethod
    def dumps(self, payload):
        """``payload`` as bytes."""

    @abc.abstractmethod
    def loads(self, data):
        """The payload ``dumps`` turned into ``data``."""


def _check_codec(codec):
    if not isinstance(codec, Codec):
        raise TypeError(f"codec must be a hvdkit.state.checkpoint.Codec (hvdkit.state.torch_codec.CODEC or "
                        f"hvdkit.state.tf_codec.CODEC), got {codec!r}")
    if not isinstance(codec.extension, str) or not re.fullmatch(r"[a-z][a-z0-9]*", codec.extension):
        raise ValueError(f"codec {codec!r}: extension must be lowercase letters and digits, starting with a "
                         f"letter, got {codec.extension!r}")


def file_name(step, extension, rank=None):
    """``ckpt-STEP.EXT``, or rank ``rank``'s ``ckpt-STEP.rank-RANK.EXT``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be an integer >= 0, got {step!r}")
    return f"ckpt-{step:08d}.{extension}" if rank is None else f"ckpt-{step:08d}.rank-{rank:05d}.{extension}"


def _parse(name):
    """(step, rank or None) of a checkpoint file name (any codec's), or None for any other name."""
    match = _FILE.match(name)
    if match is None:
        return None
    return int(match.group(1)), (None if match.group(2) is None else int(match.group(2)))


def _extension(name):
    return _FILE.match(name).group(3)


def _reason(err):
    return err.strerror or str(err)


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_directory(directory):
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create checkpoint directory {os.fspath(directory)!r}: {_reason(err)}") from err


def _check_launcher(directory, name):
    """Refuse to write once this rank's launcher is gone (``hvdkit.runtime.parent_watch``): an orphaned
    rank's checkpoint would be what a restarted job resumes from."""
    gone = parent_watch.launcher_gone()
    if gone is not None:
        raise CheckpointError(f"not writing checkpoint file {name!r} in directory {directory!r}: {gone}, "
                              f"so this rank's launcher is gone and the job is ending")


def _atomic_write(directory, name, data):
    """Write ``data`` as ``directory/name`` so that the name only ever holds a complete file."""
    directory = os.fspath(directory)
    _check_launcher(directory, name)
    temp = os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{name}")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            _check_launcher(directory, name)
        except CheckpointError:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        os.replace(temp, os.path.join(directory, name))
        _fsync_directory(directory)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise CheckpointError(f"cannot write checkpoint file {name!r} in directory {directory!r}: "
                              f"{_reason(err)}") from err


def _write_payload(directory, name, payload, codec):
    """Serialise and atomically write one file; its (name, sha256)."""
    data = codec.dumps(payload)
    _atomic_write(directory, name, data)
    return name, hashlib.sha256(data).hexdigest()


def read_pointer(directory):
    """The [(file name, sha256), ...] that ``latest`` names, or None when there is no ``latest``."""
    pointer = os.path.join(os.fspath(directory), LATEST)
    try:
        with open(pointer) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CheckpointError(f"cannot read {pointer!r}: {_reason(err)}") from err
    entries = [tuple(line.split(" ")) for line in lines if line]
    if not entries or any(len(e) != 2 or _parse(e[0]) is None or len(e[1]) != 64 for e in entries):
        raise CheckpointError(f"{pointer!r} is malformed (expected 'ckpt-STEP[.rank-R].EXT SHA256' lines): {lines!r}")
    return entries


def _check_written_by(directory, entries, codec):
    """Refuse, by name, a checkpoint another codec (framework) wrote, before reading any of it."""
    found = _extension(entries[0][0])
    if found != codec.extension:
        raise CheckpointError(f"{os.path.join(os.fspath(directory), LATEST)!r} names {entries[0][0]!r}, a .{found} "
                              f"checkpoint; this job reads .{codec.extension} checkpoints ({codec.name}): resume "
                              f"with the framework that wrote it, or use another checkpoint directory")


def _load_file(directory, name, digest, codec):
    path = os.path.join(os.fspath(directory), name)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise CheckpointError(f"{os.path.join(os.fspath(directory), LATEST)!r} names {name!r}, which cannot be "
                              f"read: {_reason(err)}") from err
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path!r} does not match the checksum in "
                              f"{os.path.join(os.fspath(directory), LATEST)!r}: it is corrupt")
    try:
        return codec.loads(data)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path!r} matches its checksum but {codec.name} cannot read it: "
                              f"{type(err).__name__}: {err}") from err


def _commit(directory, entries, keep):
    """Point ``latest`` at ``entries`` (all durable by now), then drop saves older than the newest ``keep``."""
    _atomic_write(directory, LATEST, "".join(f"{name} {digest}\n" for name, digest in entries).encode())
    step = _parse(entries[0][0])[0]
    try:
        files = [(parsed[0], name) for name in os.listdir(directory)
                 if (parsed := _parse(name)) is not None and parsed[0] <= step]
        kept = sorted({s for s, _ in files})[-keep:]
        for old_step, name in files:
            if old_step not in kept:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
    except OSError as err:
        raise CheckpointError(f"cannot remove old checkpoints in directory {directory!r}: {_reason(err)}") from err


def _check_keep(keep):
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1 (checkpoints kept), got {keep!r}")


def clean_stale(directory):
    """At start, before any rank writes: remove temporaries and the files of saves that never reached
    ``latest`` (steps newer than it; every file when there is no ``latest``), left by a killed writer."""
    directory = os.fspath(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    entries = read_pointer(directory)
    committed = _parse(entries[0][0])[0] if entries else -1
    for name in names:
        parsed = _parse(name)
        if name.startswith(TEMP_PREFIX) or (parsed is not None and parsed[0] > committed):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))


def save(directory, step, payload, keep=2, *, codec):
    """One writer: save ``payload`` as the checkpoint of ``step``; keep the newest ``keep`` saves."""
    _check_codec(codec)
    _check_keep(keep)
    name = file_name(step, codec.extension)
    _make_directory(directory)
    entry = _write_payload(directory, name, payload, codec)
    _commit(os.fspath(directory), [entry], keep)
    return os.path.join(os.fspath(directory), name)


def load_latest(directory, *, codec):
    """The newest checkpoint's payload (a sharded one's shared payload), or None when there is none."""
    _check_codec(codec)
    entries = read_pointer(directory)
    if entries is None:
        return None
    _check_written_by(directory, entries, codec)
    return _load_file(directory, *entries[0], codec)


def _describe(err):
    return str(err) if isinstance(err, CheckpointError) else f"{type(err).__name__}: {err}"


def _raise_first(results, what, directory):
    """Raise on every rank when any rank reported an error (same message everywhere)."""
    failed = [r for r in results if r["error"] is not None]
    if failed:
        first = failed[0]
        others = f" (and {len(failed) - 1} more ranks failed)" if len(failed) > 1 else ""
        raise CheckpointError(f"{what} in {os.fspath(directory)!r} failed on rank {first['rank']}: "
                              f"{first['error']}{others}")


def save_sharded(directory, step, rank, local, allgather, shared=None, keep=2, *, codec):
    """Collective: every rank calls it with its own ``local`` payload; rank 0 also passes ``shared``
    (what is the same on every rank). ``allgather(obj)`` returns every rank's ``obj`` in rank order
    (``hvd.allgather_object``). Each rank writes its own file; once all are durable, rank 0 moves
    ``latest``. Any rank's failure raises ``CheckpointError`` on every rank; ``latest`` then still
    names the previous complete save."""
    _check_codec(codec)
    _check_keep(keep)
    if rank == 0 and shared is None:
        raise ValueError("save_sharded: rank 0 must pass the shared payload")
    result = {"rank": rank, "entries": [], "error": None}
    try:
        _make_directory(directory)
        if rank == 0:
            result["entries"].append(_write_payload(directory, file_name(step, codec.extension), shared, codec))
        result["entries"].append(_write_payload(directory, file_name(step, codec.extension, rank), local, codec))
    except Exception as err:  # reported through the collective, so that every rank raises
        result["error"] = _describe(err)
    results = allgather(result)
    _raise_first(results, f"saving checkpoint step {step}", directory)
    error = None
    if rank == 0:
        try:
            _commit(os.fspath(directory), [entry for r in results for entry in r["entries"]], keep)
        except Exception as err:
            error = _describe(err)
    _raise_first(allgather({"rank": rank, "error": error}), f"committing checkpoint step {step}", directory)
    return os.path.join(os.fspath(directory), file_name(step, codec.extension, rank))


def _read_sharded(directory, rank, size, codec):
    entries = read_pointer(directory)
    if entries is None:
        return None
    _check_written_by(directory, entries, codec)
    step, first_rank = _parse(entries[0][0])
    ext = codec.extension
    expected = [file_name(step, ext)] + [file_name(step, ext, r) for r in range(len(entries) - 1)]
    if first_rank is not None or [name for name, _ in entries] != expected:
        raise CheckpointError(f"{os.path.join(os.fspath(directory), LATEST)!r} does not name a sharded checkpoint "
                              f"(ckpt-STEP.{ext}, then one ckpt-STEP.rank-R.{ext} per rank): {entries!r}")
    if len(entries) - 1 != size:
        raise CheckpointError(f"checkpoint step {step} in {os.fspath(directory)!r} was written by "
                              f"{len(entries) - 1} ranks, this job has {size}: each rank's error-feedback and "
                              f"RNG state and data position belong to its rank; resume with -np {len(entries) - 1}")
    return step, _load_file(directory, *entries[0], codec), _load_file(directory, *entries[1 + rank], codec)


def load_sharded(directory, rank, size, allgather, clean=True, *, codec):
    """Collective, at start: (step, shared payload, this rank's payload) of the newest save, or None
    when there is none. With ``clean``, rank 0 first removes what killed writers left
    (``clean_stale``). Raises ``CheckpointError`` on every rank when any rank cannot load it (corrupt
    file, different world size, another codec's files) or when ranks see different checkpoints (a
    directory not shared)."""
    _check_codec(codec)
    found, error = None, None
    try:
        if clean and rank == 0:
            clean_stale(directory)
        found = _read_sharded(directory, rank, size, codec)
    except Exception as err:
        error = _describe(err)
    results = allgather({"rank": rank, "error": error, "step": None if found is None else found[0]})
    _raise_first(results, "loading the checkpoint", directory)
    steps = {r["step"] for r in results}
    if len(steps) > 1:
        seen = ", ".join(f"rank {r['rank']}: {'none' if r['step'] is None else 'step ' + str(r['step'])}"
                         for r in results)
        raise CheckpointError(f"ranks found different checkpoints in {os.fspath(directory)!r} ({seen}); every "
                              f"rank must see the same directory (one host or a shared file system)")
    return found
