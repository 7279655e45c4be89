"""``hvdkit train --elastic``: the torch training loop under Horovod elastic.

Outside a launcher it starts ``horovodrun --gloo -np N --min-np A --max-np B
--host-discovery-script S`` on itself; each worker then trains with the
torch loop's own pieces (:mod:`hvdkit.training.torch_loop`: optimizer, epoch,
evaluation, records) inside ``hvdkit.torch.elastic.run``, its state held by an
:class:`hvdkit.torch.elastic.ElasticState`: model, optimizer (with the error-feedback
state), and the position ``epoch``, ``samples`` (of the epoch, all ranks
together) and ``global_step``. It commits every ``--commit-every`` steps and
at each epoch's end. When a worker dies the others roll back to the last
commit and go on with the ranks left; when the discovery script lists more
hosts, new workers join at the next commit. After a world change the epoch
goes on from its committed sample count: each new rank skips
``samples // (batch_size * new_size)`` batches, so a partial global batch
(fewer than ``batch_size * new_size`` samples) is read twice and none skipped.

Not available with ``--elastic`` (refused before launch): ``--mpi`` (Horovod
elastic runs on Gloo), ``--hierarchical``, ``--ranks-per-node`` and
``--average-every`` (they need node process sets, which an elastic restart
drops), and ``--checkpoint`` (the elastic state lives in memory).
"""
import dataclasses
import os
import sys

from hvdkit.errors import UsageError

DEFAULT_COMMIT_EVERY = 20
DEFAULT_MIN_NP = 1


@dataclasses.dataclass
class ElasticOptions:
    min_np: int = DEFAULT_MIN_NP  # the job goes on while at least this many workers remain
    max_np: int = None  # None: -np; more workers join when the discovery script offers slots
    host_discovery_script: str = None  # prints "host:slots" lines; horovodrun runs it every second
    commit_every: int = DEFAULT_COMMIT_EVERY  # optimizer steps between in-memory commits


def add_arguments(parser):
    group = parser.add_argument_group("elastic training (horovodrun --gloo with --min-np/--max-np)")
    group.add_argument("--elastic", action="store_true",
                       help="train under Horovod elastic: workers may fail or join; needs --host-discovery-script")
    group.add_argument("--min-np", type=int, default=DEFAULT_MIN_NP,
                       help=f"with --elastic: keep training while this many workers remain (default {DEFAULT_MIN_NP})")
    group.add_argument("--max-np", type=int, default=None, help="with --elastic: at most this many workers (default -np)")
    group.add_argument("--host-discovery-script", default=None, metavar="SCRIPT",
                       help="with --elastic: an executable printing the available hosts as host:slots lines")
    group.add_argument("--commit-every", type=int, default=DEFAULT_COMMIT_EVERY, metavar="STEPS",
                       help=f"with --elastic: commit the state in memory every STEPS steps, and at each epoch's "
                            f"end; a failure rolls back to the last commit (default {DEFAULT_COMMIT_EVERY})")


def options_from_args(args):
    return ElasticOptions(min_np=args.min_np, max_np=args.max_np, host_discovery_script=args.host_discovery_script,
                          commit_every=args.commit_every)


def validate(config, options):
    """Raise UsageError naming the first flag that cannot go with ``--elastic``."""
    if options.commit_every < 1:
        raise UsageError(f"--commit-every must be >= 1, got {options.commit_every}")
    max_np = config.np if options.max_np is None else options.max_np
    if options.min_np < 1:
        raise UsageError(f"--min-np must be >= 1, got {options.min_np}")
    if not options.min_np <= config.np <= max_np:
        raise UsageError(f"--elastic needs --min-np <= -np <= --max-np, got --min-np {options.min_np}, "
                         f"-np {config.np}, --max-np {max_np}")
    script = options.host_discovery_script
    if script is None:
        raise UsageError("--elastic needs --host-discovery-script SCRIPT (an executable printing host:slots lines; "
                         "a failed worker's host is dropped, so list at least two hosts to survive a failure)")
    if not (os.path.isfile(script) and os.access(script, os.X_OK)):
        raise UsageError(f"--host-discovery-script {script!r} is not an executable file")
    refused = [("--mpi", config.launcher == "mpi"), ("--hierarchical", config.hierarchical),
               ("--ranks-per-node", config.ranks_per_node is not None),
               ("--average-every", config.average_every is not None), ("--checkpoint", config.checkpoint is not None)]
    for flag, used in refused:
        if used:
            raise UsageError(f"{flag} is not available with --elastic (see 'hvdkit train --help'; Horovod elastic "
                             f"runs on Gloo, restarts drop node process sets, and the elastic state lives in memory)")
    if config.framework != "torch":
        raise UsageError(f"--elastic trains with --framework torch only, got --framework {config.framework}")


def horovodrun_command(horovodrun, config, options, worker_argv):
    """The elastic launch: horovodrun's Gloo controller with its elastic flags, running ``worker_argv``."""
    max_np = config.np if options.max_np is None else options.max_np
    return [horovodrun, "--gloo", "-np", str(config.np), "--min-np", str(options.min_np), "--max-np", str(max_np),
            "--host-discovery-script", os.path.abspath(options.host_discovery_script)] + list(worker_argv)


def worker_argv(config, options):
    """What each worker runs: this same ``hvdkit train --elastic`` with the training flags."""
    from hvdkit.training import config as train_config

    return [sys.executable, "-m", "hvdkit", "train", *train_config.to_argv(config), "--elastic",
            "--commit-every", str(options.commit_every)]


def launch(config, options, environ=os.environ):
    """Start the elastic job and return its exit code."""
    from hvdkit.torch import elastic
    from hvdkit.runtime import launcher

    horovodrun = launcher.find_tool("horovodrun")
    if not horovodrun:
        raise UsageError("--elastic: horovodrun not found; run 'make setup' to install Horovod")
    env = dict(environ)
    env.update(launcher.rank_environment(config.np if options.max_np is None else options.max_np,
                                         os.cpu_count() or 1, environ))
    try:
        elastic.prepare_environment(env)
    except ValueError as err:
        raise UsageError(str(err)) from None
    cmd = horovodrun_command(horovodrun, config, options, worker_argv(config, options))
    return launcher.exit_code(launcher.run(cmd, env))


def main(args):
    """``hvdkit train --elastic``: launch outside a launcher, train inside one."""
    from hvdkit.runtime.launcher import inside_launcher, launcher_world_size
    from hvdkit.training import config as train_config

    config = train_config.from_args(args)
    options = options_from_args(args)
    if inside_launcher():
        if os.environ.get("HOROVOD_ELASTIC") != "1":
            raise UsageError("--elastic workers must be started by horovodrun's elastic mode; run "
                             "'hvdkit train --elastic ...' outside a launcher and it starts them")
        train_config.check(config, launcher_world_size())
        train(config, options.commit_every)
        return 0
    validate(config, options)
    train_config.check(config, config.np if options.max_np is None else options.max_np)
    return launch(config, options)


def train(config, commit_every=DEFAULT_COMMIT_EVERY, after_step=None):
    """Train on this worker; returns the final ElasticState. ``after_step(state)``, when given, runs
    after every optimizer step (the tests watch progress through it)."""
    import torch

    import hvdkit.torch as hvd
    from hvdkit.torch import elastic
    from hvdkit.training import data as datasets
    from hvdkit.training import torch_loop, torch_models, torch_state

    elastic.init()
    torch_state.seed_everything(config.seed)
    dataset = datasets.load(config.dataset, config.seed)
    arrays = [torch.from_numpy(a) for a in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)]
    model = torch_models.build(config.model, dataset.input_shape, dataset.num_classes)
    optimizer = torch_loop.make_optimizer(config, model, hvd, None)
    state = elastic.ElasticState(model, optimizer, epoch=0, samples=0, global_step=0)
    report = _Report(config, dataset)
    try:
        elastic.run(_attempt)(state, config, arrays, commit_every, after_step or (lambda _: None), report)
    finally:
        report.close()
    return state


class _Report:
    """Rank 0's lines and metrics; whichever process is rank 0 now writes (rank 0 may change)."""

    def __init__(self, config, dataset):
        self.config = config
        self.dataset = dataset
        self.writer = None  # a MetricsWriter once this process has been rank 0
        self.last = None  # the last record written
        self.resets_seen = 0  # state.resets already announced

    def start(self, state):
        topo = state.topology
        if topo.rank != 0:
            return
        if state.resets[self.resets_seen:]:
            seconds, old, new = state.resets[-1]
            print(f"hvdkit elastic: world {old} -> {new} ranks; Horovod restarted in {seconds:.2f} s; resuming "
                  f"from the commit at step {state.global_step} (epoch {state.epoch}, sample {state.samples})",
                  flush=True)
        else:
            print(f"hvdkit train (elastic): {self.config.model} on {self.config.dataset} ({self.dataset.describe()}), "
                  f"{topo.size} ranks on {topo.num_nodes} host(s), compression {self.config.compression}, starting "
                  f"at step {state.global_step} (epoch {state.epoch}, sample {state.samples})", flush=True)
        self.resets_seen = len(state.resets)

    def epoch(self, record):
        from hvdkit.training import metrics

        if self.writer is None:
            self.writer = metrics.MetricsWriter(self.config.log_dir, "torch")
        self.writer.write(record)
        self.last = record
        print(metrics.format_epoch(record) + f"  ({record['world_size']} ranks)", flush=True)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            if self.last is not None and self.last["epoch"] == self.config.epochs - 1:
                print(f"hvdkit train (elastic): final test accuracy {100 * self.last['test_accuracy']:.2f}% "
                      f"(metrics in {self.writer.path})", flush=True)


def _attempt(state, config, arrays, commit_every, after_step, report):
    """One attempt: from the synced state to the end, or until the world changes."""
    import hvdkit.torch as hvd
    from hvdkit.training import metrics, torch_loop

    x_train, y_train, x_test, y_test = arrays
    topo = state.topology
    report.start(state)
    per_step = config.batch_size * topo.size  # samples one step consumes, all ranks together
    steps = torch_loop.steps_per_epoch(config, len(y_train), topo)

    def after_each(step):
        state.samples = step * per_step
        state.global_step += 1
        if state.global_step % commit_every == 0:
            state.commit()
        after_step(state)

    while state.epoch < config.epochs:
        totals = metrics.EpochTotals()  # this attempt's steps of the epoch only
        first_step = min(state.samples // per_step, steps)
        torch_loop.train_epoch(state.epoch, first_step, totals, config, state.model, state.optimizer, x_train,
                               y_train, hvd, topo, after_each)
        accuracy = torch_loop.evaluate(state.model, x_test, y_test, hvd, topo)
        record = torch_loop.epoch_record(state.epoch, totals, accuracy, hvd, topo)
        if topo.rank == 0:
            report.epoch(record)
        state.epoch, state.samples = state.epoch + 1, 0
        state.commit()
    _check_same_model(state.model, hvd, topo)


def _check_same_model(model, hvd, topo):
    """Collective: the final parameters must be identical on every rank (synchronous training)."""
    import hashlib

    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digests = hvd.allgather_object(digest.hexdigest(), name="hvdkit.torch.elastic.final")
    differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
    if differing:
        raise RuntimeError(f"hvdkit elastic: the final model differs from rank 0's on ranks {differing}")
    if topo.rank == 0:
        print(f"hvdkit train (elastic): final model identical on all {topo.size} ranks", flush=True)
