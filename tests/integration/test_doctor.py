"""``hvdkit doctor`` reports the real build, and fails loudly when a required
piece is missing."""
import json


def test_reports_a_complete_build(hvdkit_cli):
    result = hvdkit_cli(["doctor", "--json"])
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    rows = report["report"]
    assert report["problems"] == []
    assert rows["horovod"] == "0.28.1"
    assert rows["torch"].startswith("2.13")
    assert rows["tensorflow"].startswith("2.21")
    assert set(rows["horovod frameworks"].split(", ")) >= {"torch", "tensorflow"}
    assert set(rows["horovod controllers"].split(", ")) == {"mpi", "gloo"}
    assert rows["horovod build"].startswith("horovod0.28.1-torch2.13"), rows["horovod build"]  # hvdkit's build
    assert rows["hvdkit._C backends"].startswith("cpu")
    assert rows["hvdkit._tf_ops backends"].startswith("cpu")
    assert "Open MPI" in rows["mpirun"]


def test_missing_mpirun_is_named_and_fails(hvdkit_cli, tmp_path):
    # An empty PATH hides mpirun; the interpreter is started by absolute path.
    result = hvdkit_cli(["doctor"], env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "MISSING mpirun: not found" in result.stderr
