"""A two-line proof that Horovod works here: every rank contributes its rank
number, and the allreduced sum must equal 0 + 1 + ... + (size - 1)."""
import horovod.torch as hvd
import torch

hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank())]), op=hvd.Sum, name="demo").item()
expected = hvd.size() * (hvd.size() - 1) / 2
print(f"[rank {hvd.rank()}/{hvd.size()}] allreduce(sum of ranks) = {total:g} (expected {expected:g})", flush=True)
assert total == expected
