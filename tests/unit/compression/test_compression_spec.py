"""Compression spec strings and the registry (no Horovod, no kernels)."""
import pytest

from hvdkit.compression import ALGORITHMS, Spec, parse
from hvdkit.compression.registry import create

VALID = {
    "none": ("none", None, {}),
    "fp16": ("fp16", None, {"ef": False}),
    "bf16,ef=1": ("bf16", None, {"ef": True}),
    "int8": ("int8", 1024, {"stochastic": False}),
    "int8:256,stochastic=1": ("int8", 256, {"stochastic": True}),
    "topk:0.01,ef=1,warmup=100,min_numel=1024": ("topk", 0.01, {"ef": True, "warmup": 100, "min_numel": 1024}),
    # top-k, random-k and 1-bit leave tensors under 1024 elements dense unless min_numel says otherwise
    "topk:0.5,approx=1": ("topk", 0.5, {"approx": True, "ef": True, "min_numel": 1024}),
    "topk:0.0123456789,min_numel=0": ("topk", 0.0123456789, {}),
    " TopK : 0.1 , ef = 0 ": ("topk", 0.1, {"ef": False, "min_numel": 1024}),
    "randomk:1": ("randomk", 1.0, {"ef": True, "min_numel": 1024}),
    "onebit": ("onebit", None, {"block": 1024, "ef": True, "min_numel": 1024}),
    "onebit,block=64,min_numel=0": ("onebit", None, {"block": 64}),
    "powersgd:4": ("powersgd", 4, {"warm_start": True, "ef": True, "min_compression_rate": 2.0}),
    "powersgd:2,start_iter=10,min_compression_rate=4": ("powersgd", 2, {"warmup": 10, "min_compression_rate": 4.0}),
    "powersgd:1,warm_start=0,seed=7": ("powersgd", 1, {"warm_start": False, "seed": 7}),
}


@pytest.mark.parametrize("text", sorted(VALID))
def test_valid_specs_parse_with_defaults_filled_in(text):
    name, arg, options = VALID[text]
    spec = parse(text)
    assert (spec.name, spec.arg) == (name, arg)
    for key, value in options.items():
        assert spec.options[key] == value
    assert spec.options["warmup"] == options.get("warmup", 0)
    assert spec.options["min_numel"] == options.get("min_numel", 0)


@pytest.mark.parametrize("text", sorted(VALID))
def test_canonical_string_parses_back_to_the_same_spec(text):
    spec = parse(text)
    assert isinstance(spec, Spec)
    assert parse(str(spec)) == spec


BAD = {
    "": "unknown algorithm ''",
    "gzip": "unknown algorithm 'gzip'",
    "topk": "topk needs RATIO",
    "topk:": "topk needs RATIO",
    "topk:0": "RATIO must be a number in (0, 1]",
    "topk:1.5": "RATIO must be a number in (0, 1]",
    "topk:nan": "RATIO must be a number in (0, 1]",
    "randomk:abc": "RATIO must be a number in (0, 1]",
    "powersgd": "powersgd needs RANK",
    "powersgd:0": "RANK must be an integer >= 1",
    "powersgd:2.5": "RANK must be an integer >= 1",
    "int8:0": "BLOCK must be an integer >= 1",
    "fp16:2": "fp16 takes no ':' argument",
    "onebit,block=12": "option block='12': expected a positive multiple of 8",
    "topk:0.1,foo=1": "unknown option 'foo=1'",
    "topk:0.1,ef": "option 'ef' needs a value",
    "topk:0.1,ef=2": "option ef='2': expected 0 or 1",
    "fp16,warmup=-1": "option warmup='-1': expected an integer >= 0",
    "none,ef=1": "unknown option 'ef=1'",
    "topk:0.1,ef=1,ef=0": "option 'ef' given twice",
}


@pytest.mark.parametrize("text", sorted(BAD))
def test_malformed_specs_raise_naming_the_spec_and_the_choices(text):
    with pytest.raises(ValueError) as info:
        parse(text)
    message = str(info.value)
    assert f"compression spec {text!r}" in message
    assert BAD[text] in message
    assert "valid specs: none, fp16, bf16, int8[:BLOCK], topk:RATIO, randomk:RATIO, onebit, powersgd:RANK" in message


def test_option_errors_list_the_algorithms_options():
    with pytest.raises(ValueError, match=r"options for topk: approx, clip, ef, mask, mc, min_numel, ramp, two_phase, warmup"):
        parse("topk:0.1,block=8")


def test_non_string_spec_is_rejected():
    with pytest.raises(ValueError, match="must be a string, got int"):
        parse(3)


def test_registry_lists_every_algorithm_once_with_its_own_name():
    assert list(ALGORITHMS) == ["none", "fp16", "bf16", "int8", "topk", "randomk", "onebit", "powersgd"]
    for name, cls in ALGORITHMS.items():
        assert cls.name == name
        assert isinstance(cls.summable, bool) and cls.rounds >= 1


def test_summability_matches_what_horovod_can_sum():
    summable = {name for name, cls in ALGORITHMS.items() if cls.summable}
    assert summable == {"none", "fp16", "randomk", "powersgd"}


def test_create_builds_the_class_for_the_spec():
    compressor = create("topk:0.25,approx=1", ops=None)
    assert type(compressor).__name__ == "TopK"
    assert compressor.spec.options["approx"] is True and compressor.ef is True


@pytest.mark.parametrize("text,message", [
    ("powersgd:4,two_phase=1", r"unknown option 'two_phase=1'.*options for powersgd: "),
    ("fp16,two_phase=1", r"unknown option 'two_phase=1'.*options for fp16: "),
    ("onebit,two_phase=maybe", r"option two_phase='maybe': expected auto, 0 or 1"),
])
def test_two_phase_is_an_option_of_the_gathered_compressors_only(text, message):
    with pytest.raises(ValueError, match=message):
        parse(text)
