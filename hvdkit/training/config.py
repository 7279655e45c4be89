"""``hvdkit train``'s options and their validation.

Everything here runs before any rank starts: a bad flag costs one line and
exit code 2, not a launched job that fails later on every rank.
"""
import dataclasses
import math
import os
import tempfile

from hvdkit.runtime import env_check
from hvdkit.errors import UsageError

FRAMEWORKS = ("torch", "tensorflow")
AVAILABLE_FRAMEWORKS = ("torch", "tensorflow")
MODELS = ("mlp", "cnn", "resnet18")
DATASETS = ("digits", "synthetic", "mnist1d")  # hvdkit.training.data.DATASETS
SEQUENCE_DATASETS = ("mnist1d",)  # 1-D samples: mlp, and cnn as a 1-D conv net; no resnet18
LAUNCHERS = ("mpi", "gloo")
MODES = ("allreduce", "ps")  # how ranks combine their updates: Horovod's allreduce, or parameter servers (hvdkit.ps)
PIPELINE_SCHEDULES = ("gpipe", "1f1b", "interleaved", "zero-bubble")  # hvdkit.torch.pipeline.SCHEDULES
MULTI_CHUNK_SCHEDULES = ("interleaved", "zero-bubble")  # several model chunks per rank, micro-batches in rounds


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
    checkpoint_every: int = None  # also save every N optimizer steps (mid-epoch); torch only
    log_dir: str = "runs/hvdkit-train"
    seed: int = 0
    launcher: str = None  # None: mpirun when installed, else horovodrun --gloo
    hosts: str = None  # -H host:slots,...: where the ranks run (None: this host)
    pipeline_stages: int = 1  # K > 1: the model cut into K pipeline stages, -np / K replicas of the pipeline
    microbatches: int = 4  # pieces of each replica's batch in the pipeline
    schedule: str = "1f1b"  # the pipeline schedule (PIPELINE_SCHEDULES)
    mode: str = "allreduce"  # MODES; ps: hvdkit.training.ps_loop
    servers: int = 2  # --mode ps: parameter servers (shards), each replicated on the next when >= 2
    update: str = "sync"  # --mode ps: sync, ssp:S, async, async:scaled or backup:B (hvdkit.ps.modes)


def add_arguments(parser):
    defaults = TrainConfig()
    parser.add_argument("-np", "--num-proc", dest="np", type=int, default=defaults.np,
                        help=f"ranks to launch when not already under a launcher (default {defaults.np})")
    parser.add_argument("--framework", choices=FRAMEWORKS, default=defaults.framework)
    parser.add_argument("--model", choices=MODELS, default=defaults.model)
    parser.add_argument("--dataset", choices=DATASETS, default=defaults.dataset,
                        help="digits (8x8 images), synthetic (3x32x32 images) or mnist1d (length-40 "
                             f"sequences; --model cnn is then a 1-D conv net) (default {defaults.dataset})")
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
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                        help="with --checkpoint: also save every STEPS optimizer steps, so a resume "
                             "starts mid-epoch at the exact sample (default: at epoch ends only)")
    parser.add_argument("--log-dir", default=defaults.log_dir, help="metrics.jsonl and TensorBoard events")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--pipeline-stages", type=int, default=defaults.pipeline_stages, metavar="K",
                        help="cut the model into K pipeline stages (torch; -np a multiple of K): -np/K replicas "
                             "of the pipeline, each stage's gradients averaged among its replicas; --batch-size "
                             "is then per replica (default 1: data parallelism only)")
    parser.add_argument("--microbatches", type=int, default=defaults.microbatches, metavar="M",
                        help=f"with --pipeline-stages: micro-batches per batch (default {defaults.microbatches})")
    parser.add_argument("--schedule", choices=PIPELINE_SCHEDULES, default=defaults.schedule,
                        help=f"with --pipeline-stages: the pipeline schedule (default {defaults.schedule})")
    parser.add_argument("--mode", choices=MODES, default=defaults.mode,
                        help="allreduce: Horovod averages the gradients every step (default); ps: parameter "
                             "servers beside the job hold the model and apply the workers' updates (--servers, "
                             "--update)")
    parser.add_argument("--servers", type=int, default=defaults.servers, metavar="K",
                        help=f"with --mode ps: parameter servers, the model cut into K shards, each replicated on "
                             f"the next server when K >= 2 (default {defaults.servers})")
    parser.add_argument("--update", default=defaults.update, metavar="MODE",
                        help="with --mode ps: sync (every step waits for every worker: allreduce's result), ssp:S "
                             "(run at most S steps ahead of the slowest worker), async (apply each update on "
                             "arrival; async:scaled divides it by its staleness) or backup:B (each step takes "
                             f"the first N-B workers' updates, drops the late ones) (default {defaults.update})")
    parser.add_argument("-H", "--hosts", default=None, metavar="HOST:SLOTS,...",
                        help="run the ranks on these hosts (as hvdkit run -H), e.g. node1:2,node2:2")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--mpi", dest="launcher", action="store_const", const="mpi", help="launch with mpirun")
    which.add_argument("--gloo", dest="launcher", action="store_const", const="gloo",
                       help="launch with horovodrun's Gloo controller")


def to_argv(config):
    """The worker's command-line flags for ``config`` (what a relaunch passes on)."""
    argv = []
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if field.name in ("np", "launcher", "hosts") or value is None or value is False or value == field.default:
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


def validate(config, world_size, train_samples=None, environ=None):
    """Raise UsageError naming the first bad flag or environment variable. ``world_size``
    is the number of ranks that will train; ``train_samples`` the dataset's training size
    (None: leave the batch-size check to ``check_shard``); ``environ`` defaults to ``os.environ``."""
    environ = os.environ if environ is None else environ
    if config.framework not in AVAILABLE_FRAMEWORKS:
        raise UsageError(f"--framework {config.framework}: this version trains with "
                         f"{', '.join(AVAILABLE_FRAMEWORKS)} only")
    _positive("-np", world_size)
    _positive("--epochs", config.epochs)
    _positive("--batch-size", config.batch_size)
    _positive("--average-every", config.average_every)
    if config.average_warmup < 0:
        raise UsageError(f"--average-warmup must be >= 0, got {config.average_warmup}")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise UsageError(f"--lr must be a finite number > 0, got {config.lr}")
    if not 0 <= config.seed < 2**63:
        raise UsageError(f"--seed must be an integer in [0, 2**63), got {config.seed}")
    if not 0 <= config.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1), got {config.momentum}")
    if config.ranks_per_node is not None:
        _positive("--ranks-per-node", config.ranks_per_node)
        if world_size % config.ranks_per_node:
            raise UsageError(f"--ranks-per-node {config.ranks_per_node} does not divide -np {world_size}")
    if config.dataset in SEQUENCE_DATASETS and config.model == "resnet18":
        raise UsageError(f"--model resnet18 takes images; --dataset {config.dataset} is 1-D sequences: "
                         f"use --model cnn (a 1-D conv net there) or --model mlp")
    _check_environment(config, world_size, environ)
    if train_samples is not None:
        check_shard(config, world_size, train_samples)
    spec = _check_compression(config.compression)
    _check_ps(config, world_size, environ)
    _check_local_sgd(config, spec)
    _check_hierarchical(config, world_size, environ)
    _check_checkpoint_every(config)
    _check_pipeline(config, world_size)
    if config.checkpoint is not None:
        _writable_dir("--checkpoint", config.checkpoint)
    _writable_dir("--log-dir", config.log_dir)


def check_shard(config, world_size, train_samples):
    """Every rank (every pipeline replica) needs at least one full batch of its shard of ``train_samples``."""
    shards = world_size // config.pipeline_stages if config.pipeline_stages > 1 else world_size
    shard = -(-train_samples // shards)
    if config.batch_size > shard:
        one, holders = ("replica", f"{shards} pipeline replicas") if config.pipeline_stages > 1 else \
            ("rank", f"{world_size} ranks")
        raise UsageError(f"--batch-size {config.batch_size} is larger than a {one}'s shard ({shard} of "
                         f"{train_samples} {config.dataset} training samples on {holders})")


def _check_compression(spec):
    from hvdkit.compression import spec as compression_spec

    try:
        return compression_spec.parse(spec)
    except ValueError as err:
        raise UsageError(f"--compression: {err}") from None


def _check_local_sgd(config, spec):
    """Local SGD exchanges gradients only in its --average-warmup steps; compression that would never
    run is a contradiction, not a silent no-op."""
    if config.average_every is None:
        if config.average_warmup:
            raise UsageError(f"--average-warmup {config.average_warmup} needs --average-every H (post-local SGD); "
                             f"without it every step averages gradients")
        return
    if spec.name != "none" and spec.options["warmup"] >= config.average_warmup:
        raise UsageError(
            f"--compression {config.compression} would never run: with --average-every {config.average_every} "
            f"gradients are exchanged only in the --average-warmup {config.average_warmup} synchronous steps"
            + (f", all inside the compression's own warmup={spec.options['warmup']}" if config.average_warmup else "")
            + "; use --compression none, or a longer --average-warmup")


def _launched(environ):
    """Inside a rank started by mpirun or horovodrun (where the hosts, not this flag set, say where ranks run)."""
    return any(name in environ for name in ("OMPI_COMM_WORLD_SIZE", "HOROVOD_RANK", "PMI_SIZE"))


def _ranks_per_node(config, environ):
    """Emulated node size in effect: the flag, else HVDKIT_RANKS_PER_NODE (already checked), else None."""
    if config.ranks_per_node is not None:
        return config.ranks_per_node
    text = environ.get(env_check.RANKS_PER_NODE, "").strip()
    return int(text) if text else None


def _check_hierarchical(config, world_size, environ):
    """--hierarchical needs several nodes of several ranks; anything else silently runs flat."""
    if not config.hierarchical:
        return
    k = _ranks_per_node(config, environ)
    if k is None:
        if _launched(environ):
            return  # the launcher's hosts decide the nodes
        raise UsageError("--hierarchical: hvdkit train starts every rank on this host, which is one node; add "
                         "--ranks-per-node K to emulate nodes of K ranks (1 < K < -np, dividing it)")
    if not 1 < k < world_size:
        raise UsageError(f"--hierarchical needs several nodes of several ranks, but {k} ranks per node at "
                         f"-np {world_size} make {world_size // k} node(s) of {k}; choose --ranks-per-node K "
                         f"with 1 < K < {world_size}, dividing it")


def _check_environment(config, world_size, environ):
    """The variables hvdkit and Horovod read (hvdkit.runtime.env_check), as the ranks will see them: a
    --ranks-per-node flag replaces HVDKIT_RANKS_PER_NODE."""
    if config.ranks_per_node is not None:
        environ = dict(environ, **{env_check.RANKS_PER_NODE: str(config.ranks_per_node)})
    env_check.validate(environ, world_size)


def _check_checkpoint_every(config):
    """--checkpoint-every needs --checkpoint, and the torch loop (the TensorFlow loop saves per epoch)."""
    if config.checkpoint_every is None:
        return
    _positive("--checkpoint-every", config.checkpoint_every)
    if config.checkpoint is None:
        raise UsageError(f"--checkpoint-every {config.checkpoint_every} needs --checkpoint DIR to save into")
    if config.framework != "torch":
        raise UsageError(f"--checkpoint-every: mid-epoch checkpoints are available with --framework torch only, "
                         f"got --framework {config.framework}")


def _check_pipeline(config, world_size):
    """--pipeline-stages K: torch only, K dividing -np, a batch that splits into --microbatches, a schedule
    that can run them, and none of the flags that average over all ranks."""
    _positive("--microbatches", config.microbatches)
    if config.schedule not in PIPELINE_SCHEDULES:
        raise UsageError(f"--schedule {config.schedule}: choose one of {', '.join(PIPELINE_SCHEDULES)}")
    k = config.pipeline_stages
    _positive("--pipeline-stages", k)
    if k == 1:
        return
    if config.framework != "torch":
        raise UsageError(f"--pipeline-stages {k}: Keras 3 has no pipeline engine, so --framework "
                         f"{config.framework} trains data-parallel only; for model parallelism in TensorFlow, keep "
                         f"a layer's variables on some ranks and register them as local sources of hvdkit's gradient "
                         f"tape (hvdkit.tensorflow.PartialDistributedGradientTape), or use --framework torch")
    if world_size % k:
        valid = [n for n in range(k, 4 * k + 1, k)]
        raise UsageError(f"--pipeline-stages {k} does not divide -np {world_size}: the ranks form -np/K replicas of "
                         f"a {k}-stage pipeline (e.g. -np {', '.join(map(str, valid))})")
    if config.batch_size % config.microbatches:
        raise UsageError(f"--batch-size {config.batch_size} does not split into --microbatches {config.microbatches} "
                         f"equal micro-batches: use a multiple of {config.microbatches}")
    if config.schedule == "1f1b" and config.microbatches < k:
        raise UsageError(f"--schedule 1f1b needs --microbatches >= --pipeline-stages ({config.microbatches} < {k})")
    rounds = max(1, config.microbatches // k)
    if config.schedule in MULTI_CHUNK_SCHEDULES and config.microbatches % rounds:
        raise UsageError(f"--schedule {config.schedule} runs --microbatches in rounds of about {k}: "
                         f"{config.microbatches} is not a multiple of {rounds} (use a multiple of {k})")
    if config.model == "resnet18":
        raise UsageError("--pipeline-stages: --model resnet18 is not an nn.Sequential to cut into stages; use "
                         "--model mlp or cnn")
    for flag, value in (("--hierarchical", config.hierarchical), ("--average-every", config.average_every)):
        if value:
            raise UsageError(f"{flag} with --pipeline-stages {k}: a stage's gradients are averaged among its "
                             f"replicas only (a flat process set), not over every rank; drop {flag}")


# The allreduce job's flags --mode ps refuses (config field: flag, why), where no allreduce of gradients runs.
PS_REFUSED = {
    "hierarchical": ("--hierarchical", "there is no allreduce to run in two levels (the workers push to the "
                                       "servers); drop --hierarchical"),
    "pipeline_stages": ("--pipeline-stages", "each worker pushes its whole model's update, a pipeline stage holds "
                                             "a part of it; use --mode allreduce for pipelines"),
    "average_every": ("--average-every", "the servers already combine the workers' models (ssp:S and async let "
                                         "workers step locally); drop --average-every"),
    "checkpoint_every": ("--checkpoint-every", "the servers save their shards at each epoch's end, when no "
                                               "worker is pushing; drop --checkpoint-every"),
}


def _check_ps(config, world_size, environ):
    """--servers and --update need --mode ps; --mode ps needs a parseable update mode, at least one server, a
    backup:B that leaves a worker, a compressor the servers' codec has, and none of the allreduce-only flags."""
    from hvdkit.ps import modes
    from hvdkit.ps.codec import WIRE_SPECS, WireCodec

    if config.mode not in MODES:
        raise UsageError(f"--mode {config.mode}: choose one of {', '.join(MODES)}")
    if config.mode != "ps":
        for flag, value, default in (("--servers", config.servers, TrainConfig.servers),
                                     ("--update", config.update, TrainConfig.update)):
            if value != default:
                raise UsageError(f"{flag} {value} needs --mode ps (with --mode {config.mode} there are no servers)")
        return
    if config.servers < 1:
        raise UsageError(f"--servers must be >= 1 with --mode ps, got {config.servers}")
    try:
        mode = modes.parse(config.update)
    except ValueError as err:
        raise UsageError(f"--update {config.update}: {err}") from None
    if mode.name == "backup" and mode.backups >= world_size:
        raise UsageError(f"--update {config.update}: B must be less than the number of workers (-np {world_size}): "
                         f"each step takes the first N-B = {world_size - mode.backups} updates")
    for name, (flag, why) in PS_REFUSED.items():
        value = getattr(config, name)
        if (value > 1) if name == "pipeline_stages" else value:
            shown = "" if value is True else f" {value}"
            raise UsageError(f"--mode ps with {flag}{shown}: {why}")
    try:
        WireCodec(config.compression)
    except ValueError:
        raise UsageError(f"--mode ps with --compression {config.compression}: the parameter servers compress "
                         f"pushes and pulls with {', '.join(WIRE_SPECS)} (one round of plain tensors); choose one "
                         f"of them") from None
    _check_servers_env(config, mode, environ)


def _check_servers_env(config, mode, environ):
    """Inside a launcher with servers already given (hvdkit train's own relaunch, or ``hvdkit ps serve``'s
    variables), they must be the servers these flags describe."""
    servers = environ.get("HVDKIT_PS_SERVERS", "")
    if not (_launched(environ) and servers):
        return
    count = len(servers.split(","))
    given = environ.get("HVDKIT_PS_MODE", "sync")
    if given != str(mode):
        raise UsageError(f"--update {config.update}, but the servers in HVDKIT_PS_SERVERS run {given} "
                         f"(HVDKIT_PS_MODE): give the job the servers' mode")
    if count != config.servers:
        raise UsageError(f"--servers {config.servers}, but HVDKIT_PS_SERVERS lists {count} server(s): give "
                         f"--servers {count}")
    compression = environ.get("HVDKIT_PS_COMPRESSION", "none")
    if compression != config.compression:
        raise UsageError(f"--compression {config.compression}, but the servers in HVDKIT_PS_SERVERS compress "
                         f"with {compression} (HVDKIT_PS_COMPRESSION): give the job the servers' compression")


def check(config, world_size):
    """Every flag and environment value of a run on ``world_size`` ranks, then its data shard: a
    ``UsageError`` naming the first bad one."""
    from hvdkit.training import data

    validate(config, world_size)  # flags and environment first: they need no dataset
    check_shard(config, world_size, len(data.load(config.dataset, config.seed).x_train))
