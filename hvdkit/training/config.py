"""``hvdkit train``'s options and their validation.

Everything here runs before any rank starts: a bad flag costs one line and
exit code 2, not a launched job that fails later on every rank.
"""
import dataclasses
import os
import tempfile

from hvdkit.errors import UsageError

FRAMEWORKS = ("torch", "tensorflow")
AVAILABLE_FRAMEWORKS = ("torch",)  # the TensorFlow training loop arrives with hvdkit.tensorflow
MODELS = ("mlp", "cnn", "resnet18")
LAUNCHERS = ("mpi", "gloo")


@dataclasses.dataclass
class TrainConfig:
    np: int = 2
    framework: str = "torch"
    model: str = "mlp"
    dataset: str = "digits"
    epochs: int = 20
    batch_size: int = 32  # per rank
    lr: float = 0.05  # for the global batch (batch_size * np); see hvdkit.training.torch_loop
    momentum: float = 0.9
    compression: str = "none"
    hierarchical: bool = False
    ranks_per_node: int = None
    average_every: int = None  # local SGD: average parameters every H steps instead of gradients every step
    average_warmup: int = 0  # post-local SGD: synchronous steps before local steps begin
    checkpoint: str = None
    log_dir: str = "runs/hvdkit-train"
    seed: int = 0
    launcher: str = None  # None: mpirun when installed, else horovodrun --gloo


def add_arguments(parser):
    defaults = TrainConfig()
    parser.add_argument("-np", "--num-proc", dest="np", type=int, default=defaults.np,
                        help=f"ranks to launch when not already under a launcher (default {defaults.np})")
    parser.add_argument("--framework", choices=FRAMEWORKS, default=defaults.framework)
    parser.add_argument("--model", choices=MODELS, default=defaults.model)
    parser.add_argument("--dataset", choices=("digits", "synthetic"), default=defaults.dataset)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="samples per rank per step")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--compression", default=defaults.compression,
                        help="compression spec, e.g. none, fp16, int8, topk:0.01, onebit, powersgd:4")
    parser.add_argument("--hierarchical", action="store_true", help="average inside each node, then across nodes")
    parser.add_argument("--ranks-per-node", type=int, default=None, help="emulate nodes of K ranks on one host")
    parser.add_argument("--average-every", type=int, default=None, metavar="H",
                        help="local SGD: average the model every H steps instead of the gradients every step")
    parser.add_argument("--average-warmup", type=int, default=defaults.average_warmup, metavar="STEPS",
                        help="post-local SGD: synchronous steps before --average-every starts (default 0)")
    parser.add_argument("--checkpoint", default=None, metavar="DIR", help="save (and resume from) checkpoints here")
    parser.add_argument("--log-dir", default=defaults.log_dir, help="metrics.jsonl and TensorBoard events")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--mpi", dest="launcher", action="store_const", const="mpi", help="launch with mpirun")
    which.add_argument("--gloo", dest="launcher", action="store_const", const="gloo",
                       help="launch with horovodrun's Gloo controller")


def to_argv(config):
    """The worker's command-line flags for ``config`` (what a relaunch passes on)."""
    argv = []
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if field.name in ("np", "launcher") or value is None or value is False or value == field.default:
            continue
        flag = "--" + field.name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def from_args(args):
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def _positive(name, value):
    if value is not None and value < 1:
        raise UsageError(f"{name} must be >= 1, got {value}")


def _writable_dir(flag, path):
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".hvdkit-write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path!r} is not a writable directory ({err.strerror or err})") from None


def validate(config, world_size, train_samples):
    """Raise UsageError naming the first bad flag. ``world_size`` is the number
    of ranks that will train; ``train_samples`` the dataset's training size."""
    if config.framework not in AVAILABLE_FRAMEWORKS:
        raise UsageError(f"--framework {config.framework}: this version trains with "
                         f"{', '.join(AVAILABLE_FRAMEWORKS)} only")
    _positive("-np", world_size)
    _positive("--epochs", config.epochs)
    _positive("--batch-size", config.batch_size)
    _positive("--average-every", config.average_every)
    if config.average_warmup < 0:
        raise UsageError(f"--average-warmup must be >= 0, got {config.average_warmup}")
    if not config.lr > 0:
        raise UsageError(f"--lr must be > 0, got {config.lr}")
    if not 0 <= config.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1), got {config.momentum}")
    if config.ranks_per_node is not None:
        _positive("--ranks-per-node", config.ranks_per_node)
        if world_size % config.ranks_per_node:
            raise UsageError(f"--ranks-per-node {config.ranks_per_node} does not divide -np {world_size}")
    shard = -(-train_samples // world_size)
    if config.batch_size > shard:
        raise UsageError(f"--batch-size {config.batch_size} is larger than a rank's shard "
                         f"({shard} of {train_samples} {config.dataset} training samples on {world_size} ranks)")
    _check_compression(config.compression)
    if config.checkpoint is not None:
        _writable_dir("--checkpoint", config.checkpoint)
    _writable_dir("--log-dir", config.log_dir)


def _check_compression(spec):
    from hvdkit.compression import spec as compression_spec

    try:
        compression_spec.parse(spec)
    except ValueError as err:
        raise UsageError(f"--compression: {err}") from None
