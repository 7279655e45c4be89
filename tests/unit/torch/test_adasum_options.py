"""op=hvd.Adasum runs Horovod's own optimizer: each hvdkit-only option is refused there, naming the option,
op=hvd.Adasum and what works, unless it is left at its default (or is honoured: backward_passes_per_step,
loss_scaler, nonfinite='pass'). The checks run while the optimizer is built, before Horovod is started; the
np-2 comparison with Horovod's Adasum is tests/parallel/torch/test_adasum.py."""
import horovod.torch
import pytest
import torch

import hvdkit.torch as hvdkit_torch
from hvdkit.averaging import PeriodicAverager


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 2))


def adasum(net=None, **kwargs):
    net = net or model()
    return hvdkit_torch.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), net.named_parameters(),
                                             op=hvdkit_torch.Adasum, **kwargs)


@pytest.fixture(autouse=True, scope="module")
def horovod_is_not_started():
    assert not horovod.torch.is_initialized(), "a unit test started Horovod; unit tests must run without it"


@pytest.fixture
def horovod_calls(monkeypatch):
    """What reaches Horovod's DistributedOptimizer (stubbed: building it needs Horovod started)."""
    calls = []
    monkeypatch.setattr(horovod.torch, "DistributedOptimizer", lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


@pytest.mark.parametrize("kwargs,message", [
    ({"compression": "topk:0.01"}, "op=hvd.Adasum with compression='topk:0.01': Adasum runs Horovod's own optimizer, "
                                   "which supports compression 'none' or 'fp16' only; use op=hvd.Average for topk"),
    ({"compression": "powersgd:2"}, "compression='powersgd:2'"),
    ({"compression": "fp16,warmup=3"}, "op=hvd.Adasum with compression='fp16' with warmup=3: Adasum runs Horovod's "
                                       "own optimizer, which takes Horovod's fp16 without options; drop warmup=3"),
    ({"fusion_mb": 4}, "op=hvd.Adasum with fusion_mb=4: Adasum runs Horovod's own optimizer, which fuses with "
                       "HOROVOD_FUSION_THRESHOLD"),
    ({"hierarchical": True}, "op=hvd.Adasum with hierarchical=True: Adasum runs Horovod's own optimizer, which "
                             "reduces inside each node first by itself (on GPUs); use hierarchical=False"),
    ({"hierarchical": "auto"}, "op=hvd.Adasum with hierarchical='auto'"),
    ({"groups": 2}, "op=hvd.Adasum with groups/num_groups"),
    ({"num_groups": 2}, "op=hvd.Adasum with groups/num_groups: Adasum runs Horovod's own optimizer, which "
                        "exchanges each parameter on its own; drop groups/num_groups"),
    ({"sparse_as_dense": True}, "op=hvd.Adasum with sparse_as_dense=True: Adasum runs Horovod's own optimizer, "
                                "which exchanges dense gradients only"),
    ({"local_sgd": PeriodicAverager(period=4)}, "op=hvd.Adasum with local_sgd=<PeriodicAverager>: Adasum runs "
                                                "Horovod's own optimizer, which updates every step"),
    ({"bucket_order": "registration"}, "op=hvd.Adasum with bucket_order='registration': Adasum runs Horovod's own "
                                       "optimizer, which has no buckets"),
    ({"nonfinite": "raise"}, "op=hvd.Adasum with nonfinite='raise': Adasum runs Horovod's own optimizer, which "
                             "applies non-finite updates as they come (nonfinite='pass'); use op=hvd.Average"),
    ({"gradient_predivide_factor": 2.0}, "gradient_predivide_factor=2.0 splits an average: it needs op=hvd.Average, "
                                         "not op=hvd.Adasum"),
])
def test_hvdkit_options_are_refused_by_name(kwargs, message, horovod_calls):
    with pytest.raises(ValueError) as info:
        adasum(**kwargs)
    assert message in str(info.value)
    assert not horovod_calls


def test_a_process_set_is_refused(horovod_calls):
    with pytest.raises(ValueError, match=r"op=hvd.Adasum with process_set=.*global process set only"):
        adasum(process_set=horovod.torch.ProcessSet([0]))


def test_defaults_and_honoured_options_reach_horovods_adasum(horovod_calls):
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    hvdkit_torch.DistributedOptimizer(optimizer, net.named_parameters(), compression="fp16", op=hvdkit_torch.Adasum,
                                      backward_passes_per_step=2, fusion_mb=hvdkit_torch.DEFAULT_FUSION_MB,
                                      hierarchical=False, process_set=horovod.torch.global_process_set,
                                      sparse_as_dense=False, bucket_order="ready", nonfinite="pass",
                                      loss_scaler=torch.amp.GradScaler("cpu"), gradient_predivide_factor=1.0)
    adasum(net)
    (args, kwargs), (default_args, _) = horovod_calls
    assert args[0] is optimizer and args[2] is horovod.torch.Compression.fp16 and args[3] == 2
    assert kwargs == {"op": horovod.torch.Adasum}
    assert default_args[2] is horovod.torch.Compression.none and default_args[3] == 1
