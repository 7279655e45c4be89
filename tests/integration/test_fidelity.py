"""Every compressor trains like dense with the defaults a user gets: ``hvdkit bench fidelity``
(benchmarks/fidelity.py) on 2 ranks, the MLP on digits for ``hvdkit train``'s 20 epochs, one
seed, all specs in one mpirun job; each spec is scored against dense training in that same job.

No warm-up or other option is added to any spec: what fails here fails for a user too.
"""
import importlib.util
import json
import os

import pytest

from conftest import REPO, run_hvdkit

SPECS = ["none", "int8", "onebit", "powersgd:4", "topk:0.01", "randomk:0.01"]
# One seed's final accuracy on 359 test samples moves by about a point between seeds (0.28 points a
# sample; benchmarks/README.md, "Fidelity"), so a compressor may trail dense by 2.5 points (9 samples).
MARGIN = 0.025
FLOOR = 0.5  # five times chance (10 classes): no untrained or diverged model gets here
DENSE_FLOOR = 0.95  # what tests/integration/test_train.py asks of hvdkit train's default run


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("fidelity")
    result = run_hvdkit(["bench", "fidelity", "--datasets", "digits", "--layouts", "flat-2", "--seeds", "1",
                         "--specs", ",".join(SPECS), "--json", str(out / "fidelity.json"),
                         "--plot", str(out / "fidelity.png")], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "fidelity.png").stat().st_size > 1000
    with open(out / "fidelity.json") as f:
        return {r["compression"]: r for r in json.load(f)}


def test_one_job_ran_every_spec_and_dense_learned(records):
    assert sorted(records) == sorted(SPECS)
    for r in records.values():
        assert (r["ranks"], r["hierarchical"], r["dataset"], r["model"], r["epochs"]) == (2, False, "digits", "mlp", 20)
        assert len(r["accuracies"]) == 1 and r["accuracy_std"] == 0.0
        assert r["dense_accuracy_mean"] == records["none"]["accuracy_mean"]
    assert records["none"]["accuracy_mean"] >= DENSE_FLOOR
    assert records["none"]["bytes_per_step"] > 0 and records["none"]["compression_ratio"] == 1.0


@pytest.mark.parametrize("spec", [s for s in SPECS if s != "none"])
def test_compressor_with_defaults_converges_like_dense(records, spec):
    r, dense = records[spec], records["none"]
    assert r["accuracy_mean"] >= FLOOR, f"{spec}: {r['accuracy_mean']:.4f}, dense {dense['accuracy_mean']:.4f}"
    assert r["accuracy_mean"] >= dense["accuracy_mean"] - MARGIN, (
        f"{spec}: {r['accuracy_mean']:.4f} vs dense {dense['accuracy_mean']:.4f} (margin {MARGIN})")
    assert r["compression_ratio"] > 2.5, f"{spec}: compression ratio {r['compression_ratio']}"
    assert 0 < r["bytes_per_step"] < dense["bytes_per_step"] / 2.5


@pytest.mark.parametrize("flags, message", [
    (["--datasets", "imagenet"], "--datasets 'imagenet': unknown 'imagenet'; valid: mnist1d, digits"),
    (["--layouts", "flat-3"], "--layouts 'flat-3': unknown 'flat-3'; valid: flat-2, hier-2x2"),
    (["--specs", "none,gzip"], "--specs: compression spec 'gzip': unknown algorithm 'gzip'; valid specs: "),
    (["--add-specs", "topk:0.01,warmup=x"], "--add-specs: compression spec 'topk:0.01,warmup=x': option warmup="),
    (["--seeds", "0"], "--seeds must be >= 1, got 0"),
])
def test_bad_flags_name_the_value_and_the_choices(capsys, flags, message):
    # In this process (argparse exits with 2 before anything starts): the job above ran the command line.
    spec = importlib.util.spec_from_file_location("fidelity", os.path.join(REPO, "benchmarks", "fidelity.py"))
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)
    with pytest.raises(SystemExit) as exit_info:
        fidelity.parse_args(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
