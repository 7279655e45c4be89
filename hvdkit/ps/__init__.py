"""Parameter servers beside Horovod: servers as a service, workers as the job.

Servers hold the flattened parameter vector, cut into balanced byte ranges
(``sharding``), and only sum and apply; the optimizer stays on the workers.
``sync`` exchanges gradients (equal to allreduce); ``ssp:S``, ``async`` and
``backup:B`` push the delta of a local optimizer step and pull parameters
(``modes`` for the rules, ``shard`` for one shard's state under them).
Messages travel over ZeroMQ (``wire`` frames them and signs them with the
job's secret, ``transport`` holds the sockets), which survives a peer's
death where MPI ends the job. ``server`` is one server process;
``replication`` repeats each shard on the next server; ``store`` writes
checkpoints through ``hvdkit.state.checkpoint``; ``codec`` compresses
messages with hvdkit's compressors. Workers use ``client`` through
``worker`` and a thin framework shim (``torch_worker``, ``keras_worker``);
``launch`` starts servers beside a job.
"""
