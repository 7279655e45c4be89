"""Compression spec strings: ``NAME[:ARG][,KEY=VALUE]...``.

``none``, ``fp16``, ``bf16``, ``int8[:BLOCK]``, ``topk:RATIO``,
``randomk:RATIO``, ``onebit``, ``powersgd:RANK``, and ``auto`` (the exchange
chooses per bucket among candidates: :data:`AUTO`). Options after commas, e.g.
``topk:0.01,ef=1,warmup=100,min_numel=1024``:

* every algorithm: ``warmup=STEPS`` (exchange dense gradients for the first
  STEPS optimizer steps) and ``min_numel=N`` (tensors with fewer than N
  elements are never compressed);
* per algorithm, as its class lists in ``options`` (``ef=0|1`` error
  feedback, ``approx=1`` for top-k, ``stochastic=1`` for int8, ...).

An unknown or malformed spec raises ``ValueError`` naming the spec and the
valid choices. The grammar and value parsers live here; which names and
options exist comes from the algorithm classes in the registry.
"""
import dataclasses
import math
import types

__all__ = ["AUTO", "Spec", "parse", "flag", "auto_flag", "positive_int", "non_negative_int", "block_size", "ratio", "positive_float",
           "non_negative_float"]


def flag(text):
    """``0/1/true/false/yes/no/on/off`` -> bool."""
    value = {"0": False, "1": True, "false": False, "true": True, "no": False, "yes": True,
             "off": False, "on": True}.get(text.strip().lower())
    if value is None:
        raise ValueError("expected 0 or 1")
    return value


flag.describe = "0 or 1"


def auto_flag(text):
    """``auto`` (hvdkit decides), ``0`` or ``1``, kept as that text."""
    value = text.strip().lower()
    if value not in ("auto", "0", "1"):
        raise ValueError("expected auto, 0 or 1")
    return value


auto_flag.describe = "auto, 0 or 1"


def _integer(text):
    try:
        return int(text, 10)
    except ValueError:
        raise ValueError("expected an integer") from None


def _integer_at_least(minimum):
    """A parser of integers >= ``minimum`` (with the ``describe`` text the error messages use)."""
    def parse_integer(text):
        value = _integer(text)
        if value < minimum:
            raise ValueError(f"expected an integer >= {minimum}")
        return value

    parse_integer.describe = f"an integer >= {minimum}"
    return parse_integer


positive_int = _integer_at_least(1)
non_negative_int = _integer_at_least(0)


def block_size(text):
    value = _integer(text)
    if value < 8 or value % 8:
        raise ValueError("expected a positive multiple of 8")
    return value


block_size.describe = "a positive multiple of 8"


def _number(text):
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def ratio(text):
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise ValueError("expected a number in (0, 1]")
    return value


ratio.describe = "a number in (0, 1]"


def positive_float(text):
    value = _number(text)
    if value <= 0:
        raise ValueError("expected a number > 0")
    return value


positive_float.describe = "a number > 0"


def non_negative_float(text):
    value = _number(text)
    if value < 0:
        raise ValueError("expected a number >= 0")
    return value


non_negative_float.describe = "a number >= 0"

# Options every algorithm accepts: name -> (parser, default).
COMMON_OPTIONS = {"warmup": (non_negative_int, 0), "min_numel": (non_negative_int, 0)}
# The common defaults of the compressors that code each value with little or no regard to its tensor (top-k,
# random-k, 1-bit): tensors under 1024 elements (biases, norms, a small last layer) stay dense. They cost
# little to send and are what these compressors damage most (benchmarks/README.md, "Fidelity").
SMALL_TENSORS_DENSE = {"min_numel": 1024}


@dataclasses.dataclass(frozen=True)
class Argument:
    """The positional ``:ARG`` of a spec: its display name, parser and default."""

    label: str  # shown in messages and usage, e.g. "RATIO"
    parse: object  # text -> value; raises ValueError on a bad value
    default: object = None  # value when absent; None means the argument is required


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed spec: the algorithm name, its argument and every option (defaults filled in)."""

    name: str
    arg: object = None
    options: types.MappingProxyType = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def head(self):
        """The spec as a user writes it, without its options (``topk:0.01``)."""
        return self.name if self.arg is None else f"{self.name}:{self.arg}"

    def __str__(self):
        """The canonical spec string: every option spelled out; parses back to an equal Spec."""
        parts = [self.name if self.arg is None else f"{self.name}:{self.arg!r}"]
        parts += [f"{k}={_spelled(v)}" for k, v in sorted(self.options.items())]
        return ",".join(parts)


def _spelled(value):
    """An option value as a spec string spells it (flags as 0/1, words bare)."""
    if isinstance(value, bool):
        return str(int(value))
    return value if isinstance(value, str) else repr(value)


def usage(algorithms):
    """One line listing every valid spec form, for error messages."""
    forms = []
    for name, cls in algorithms.items():
        arg = cls.argument
        forms.append(name if arg is None else f"{name}[:{arg.label}]" if arg.default is not None
                     else f"{name}:{arg.label}")
    return ", ".join(forms + [AUTO.name])


def _fail(text, problem, algorithms, cls=None):
    options = dict(COMMON_OPTIONS, **(cls.options if cls is not None else {}))
    extra = f"; options for {cls.name}: {', '.join(sorted(options))}" if cls is not None else ""
    raise ValueError(f"compression spec {text!r}: {problem}; valid specs: {usage(algorithms)}{extra}")


def parse(text, algorithms=None):
    """Parse ``text`` into a Spec, validated against ``algorithms`` (name -> class; default: the registry)."""
    if algorithms is None:
        from hvdkit.compression.registry import ALGORITHMS as algorithms
    if not isinstance(text, str):
        raise ValueError(f"compression spec must be a string, got {type(text).__name__} {text!r}; "
                         f"valid specs: {usage(algorithms)}")
    head, *option_texts = [part.strip() for part in text.strip().split(",")]
    name, sep, arg_text = (part.strip() for part in head.partition(":"))
    cls = algorithms.get(name.lower()) or (AUTO if name.lower() == AUTO.name else None)
    if cls is None:
        _fail(text, f"unknown algorithm {name!r}", algorithms)
    arg = _parse_argument(text, cls, arg_text if sep else None, algorithms)
    options = {key: default for key, (_, default) in dict(COMMON_OPTIONS, **cls.options).items()}
    options.update(getattr(cls, "common_defaults", {}))  # e.g. random-k leaves small tensors dense
    seen = set()
    for option_text in option_texts:
        key, eq, value_text = (part.strip() for part in option_text.partition("="))
        key = getattr(cls, "aliases", {}).get(key, key)  # e.g. PowerSGD's start_iter is warmup
        if key in seen:
            _fail(text, f"option {key!r} given twice", algorithms, cls)
        seen.add(key)
        parser = dict(COMMON_OPTIONS, **cls.options).get(key, (None,))[0]
        if parser is None or not eq:
            _fail(text, f"unknown option {option_text!r}" if parser is None else f"option {key!r} needs a value "
                  f"({key}=...)", algorithms, cls)
        try:
            options[key] = parser(value_text)
        except ValueError as err:
            _fail(text, f"option {key}={value_text!r}: {err}", algorithms, cls)
    return Spec(cls.name, arg, types.MappingProxyType(options))


def _parse_argument(text, cls, arg_text, algorithms):
    arg = cls.argument
    if arg is None:
        if arg_text is not None:
            _fail(text, f"{cls.name} takes no ':' argument", algorithms, cls)
        return None
    if arg_text is None or arg_text == "":
        if arg.default is None:
            _fail(text, f"{cls.name} needs {arg.label} ({cls.name}:{arg.label})", algorithms, cls)
        return arg.default
    try:
        return arg.parse(arg_text)
    except ValueError:
        _fail(text, f"{arg.label} must be {arg.parse.describe}, got {arg_text!r}", algorithms, cls)


# --- "auto": the exchange chooses ---------------------------------------------------------------------
ROUTE_CHOICES = ("flat", "two_phase", "hierarchical")


def candidate_list(text):
    """``A+B+...``: compression specs without options (``none``, ``fp16``, ``topk:0.01``, ...), kept as their
    canonical ``+``-joined text with ``none`` first: dense is always a candidate."""
    heads = ["none"]
    for part in (p.strip() for p in text.split("+")):
        if not part:
            continue
        try:
            parsed = parse(part)
        except ValueError as err:
            raise ValueError(str(err).split("; valid specs")[0]) from None
        if parsed.name == AUTO.name:
            raise ValueError("auto cannot be its own candidate")
        from hvdkit.compression.registry import ALGORITHMS

        default = ALGORITHMS[parsed.name].argument
        head = parsed.name if default is None or parsed.arg == default.default else parsed.head
        if head not in heads:
            heads.append(head)
    return "+".join(heads)


candidate_list.describe = "compression specs without options joined by '+', e.g. none+fp16+topk:0.01"


def pinned_choice(text):
    """``SPEC[@ROUTE]`` (a candidate and, optionally, one of ROUTE_CHOICES), or empty: nothing pinned."""
    text = text.strip()
    if not text:
        return ""
    head, _, route = text.partition("@")
    if route and route not in ROUTE_CHOICES:
        raise ValueError(f"route {route!r} is not one of {', '.join(ROUTE_CHOICES)}")
    head = candidate_list(head).split("+")[-1]
    return f"{head}@{route}" if route else head


pinned_choice.describe = f"SPEC[@ROUTE] with ROUTE one of {', '.join(ROUTE_CHOICES)}, e.g. topk:0.01@hierarchical"


class AUTO:
    """The ``auto`` spec: not an algorithm but the choice of one per bucket, made by the exchange
    (``hvdkit.exchange.auto``) from a probe of the links and the cost model. Options:

    * ``candidates``: the compressors considered besides dense (default: those that keep accuracy
      within about a point of dense with their defaults, benchmarks/README.md "Fidelity");
    * ``pin=SPEC[@ROUTE]``: use this one (and this route) for every compressible bucket;
    * ``tie``: dense wins unless a compressed choice is predicted faster by more than this fraction;
    * ``revisit``: steps measured after a choice (0: never revisit); ``slack``: how much slower than
      predicted a step may be before the next best choice is tried;
    * ``gbit`` (> 0) and ``latency_us``: the link between nodes, instead of probing it.
    """

    name = "auto"
    argument = None
    options = {"candidates": (candidate_list, "none+fp16+int8+topk:0.01+powersgd:4"), "pin": (pinned_choice, ""),
               "tie": (non_negative_float, 0.1), "revisit": (non_negative_int, 3), "slack": (non_negative_float, 0.25),
               "gbit": (non_negative_float, 0.0), "latency_us": (non_negative_float, 50.0)}
    common_defaults = SMALL_TENSORS_DENSE  # as the sparsifiers among the candidates want
