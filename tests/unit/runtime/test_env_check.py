"""hvdkit.runtime.env_check: bad values of the variables hvdkit and Horovod read are refused before any rank
starts, in one line naming the variable, the value and what is valid."""
import pytest

from hvdkit.runtime import env_check
from hvdkit.runtime import horovod_env
from hvdkit.runtime import tf_log
from hvdkit.errors import UsageError


def test_an_empty_environment_and_hvdkits_own_defaults_are_valid():
    env_check.validate({})
    env_check.validate(dict(horovod_env.DEFAULTS), world_size=4)
    env_check.validate(dict(horovod_env.LAUNCH_DEFAULTS))


def test_every_default_hvdkit_sets_has_a_rule():
    names = set(horovod_env.DEFAULTS) | set(horovod_env.LAUNCH_DEFAULTS) | {tf_log.LEVEL_VARIABLE}
    env_check.validate({tf_log.LEVEL_VARIABLE: tf_log.DEFAULT_LEVEL})
    assert names <= set(env_check.RULES), names - set(env_check.RULES)


@pytest.mark.parametrize("name,value", [
    ("HOROVOD_CYCLE_TIME", "0"), ("HOROVOD_CYCLE_TIME", "0.05"), ("HOROVOD_CYCLE_TIME", " 5 "),
    ("HOROVOD_FUSION_THRESHOLD", "0"), ("HOROVOD_FUSION_THRESHOLD", "134217728"),
    ("HOROVOD_STALL_CHECK_TIME_SECONDS", "1"), ("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", "0"),
    ("HOROVOD_STALL_CHECK_DISABLE", "1"), ("HOROVOD_CONTROLLER", "GLOO"), ("HOROVOD_CPU_OPERATIONS", "mpi"),
    ("OMPI_MCA_mpi_yield_when_idle", "true"), ("THP_MEM_ALLOC_ENABLE", "0"),
    ("HVDKIT_RANKS_PER_NODE", "2"), ("HVDKIT_RANKS_PER_NODE", ""), ("HVDKIT_CPU_ISA", "scalar"),
    ("HVDKIT_ABORT_ON_EXCEPTION", "0"), ("HVDKIT_ABORT_ON_EXCEPTION", "1"), ("TF_CPP_MIN_LOG_LEVEL", "0"),
    ("TF_CPP_MIN_LOG_LEVEL", "3"),
])
def test_good_values_pass(name, value):
    env_check.validate({name: value}, world_size=4)


@pytest.mark.parametrize("name,value,valid", [
    ("HOROVOD_CYCLE_TIME", "fast", "a number of milliseconds >= 0"),
    ("HOROVOD_CYCLE_TIME", "-1", "a number of milliseconds >= 0"),
    ("HOROVOD_CYCLE_TIME", "nan", "a number of milliseconds >= 0"),
    ("HOROVOD_CYCLE_TIME", "", "a number of milliseconds >= 0"),
    ("HOROVOD_FUSION_THRESHOLD", "16M", "an integer number of bytes >= 0 (0: no fusion)"),
    ("HOROVOD_FUSION_THRESHOLD", "-1", "an integer number of bytes >= 0 (0: no fusion)"),
    ("HOROVOD_FUSION_THRESHOLD", "1e6", "an integer number of bytes >= 0 (0: no fusion)"),
    ("HOROVOD_STALL_CHECK_TIME_SECONDS", "0", "an integer number of seconds >= 1"),
    ("HOROVOD_STALL_CHECK_TIME_SECONDS", "2.5", "an integer number of seconds >= 1"),
    ("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", "-5", "an integer number of seconds >= 0 (0: never shut down)"),
    ("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", "soon", "an integer number of seconds >= 0 (0: never shut down)"),
    ("HOROVOD_STALL_CHECK_DISABLE", "true", "one of 0, 1"),
    ("HOROVOD_CONTROLLER", "nccl", "one of mpi, gloo"),
    ("OMPI_MCA_mpi_yield_when_idle", "maybe", "one of 0, 1, true, false, yes, no, enabled, disabled"),
    ("THP_MEM_ALLOC_ENABLE", "on", "one of 0, 1"),
    ("HVDKIT_RANKS_PER_NODE", "two", "a positive integer that divides the number of ranks"),
    ("HVDKIT_RANKS_PER_NODE", "0", "a positive integer that divides the number of ranks"),
    ("HVDKIT_CPU_ISA", "AVX2", "one of avx512, avx2, scalar"),
    ("HVDKIT_ABORT_ON_EXCEPTION", "yes", "1 (the default: an uncaught exception on a rank aborts the job) or 0 "
                                         "(leave it to Python and Horovod)"),
    ("TF_CPP_MIN_LOG_LEVEL", "quiet", "an integer >= 0 (0: all of TensorFlow's C++ logs, 1: no INFO, 2: no WARNING, "
                                      "3: no ERROR)"),
    ("TF_CPP_MIN_LOG_LEVEL", "-1", "an integer >= 0 (0: all of TensorFlow's C++ logs, 1: no INFO, 2: no WARNING, "
                                   "3: no ERROR)"),
])
def test_bad_values_name_the_variable_the_value_and_what_is_valid(name, value, valid):
    with pytest.raises(UsageError) as info:
        env_check.validate({name: value})
    assert str(info.value) == f"{name}={value!r}: expected {valid}"


def test_ranks_per_node_must_divide_the_world_size():
    env_check.validate({"HVDKIT_RANKS_PER_NODE": "3"})  # world size unknown: only the form is checked
    with pytest.raises(UsageError, match=r"^HVDKIT_RANKS_PER_NODE='3' does not divide the 4 ranks; expected one of "
                                         r"1, 2, 4$"):
        env_check.validate({"HVDKIT_RANKS_PER_NODE": "3"}, world_size=4)


def test_a_stall_shutdown_shorter_than_the_stall_check_is_refused():
    with pytest.raises(UsageError) as info:
        env_check.validate({"HOROVOD_STALL_CHECK_TIME_SECONDS": "30", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "10"})
    assert str(info.value) == ("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS=10 is less than HOROVOD_STALL_CHECK_TIME_SECONDS=30: "
                               "Horovod would never shut a stalled job down; expected 0 (never) or a value >= 30")


def test_the_contradiction_names_the_default_it_comes_from(monkeypatch):
    check = horovod_env.DEFAULTS.get("HOROVOD_STALL_CHECK_TIME_SECONDS")
    source = "hvdkit's default" if check is not None else "Horovod's default"
    check = check or "60"
    too_short = str(int(check) - 1)
    with pytest.raises(UsageError, match=rf"^HOROVOD_STALL_SHUTDOWN_TIME_SECONDS={too_short} is less than "
                                         rf"HOROVOD_STALL_CHECK_TIME_SECONDS={check} \({source}\)"):
        env_check.validate({"HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": too_short})
    monkeypatch.delitem(horovod_env.DEFAULTS, "HOROVOD_STALL_CHECK_TIME_SECONDS", raising=False)
    with pytest.raises(UsageError, match=r"HOROVOD_STALL_CHECK_TIME_SECONDS=60 \(Horovod's default\)"):
        env_check.validate({"HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "59"})


@pytest.mark.parametrize("env", [
    {"HOROVOD_STALL_CHECK_TIME_SECONDS": "30", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "30"},
    {"HOROVOD_STALL_CHECK_TIME_SECONDS": "30", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "0"},
    {"HOROVOD_STALL_CHECK_TIME_SECONDS": "30", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "10",
     "HOROVOD_STALL_CHECK_DISABLE": "1"},
])
def test_stall_settings_that_agree_or_are_off_pass(env):
    env_check.validate(env)


def test_the_first_bad_variable_is_named_and_the_message_is_one_line():
    with pytest.raises(UsageError) as info:
        env_check.validate({"HOROVOD_FUSION_THRESHOLD": "lots\nof", "HOROVOD_CYCLE_TIME": "x"})
    assert "\n" not in str(info.value)
