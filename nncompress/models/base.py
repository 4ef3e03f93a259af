"""The model interface: a parallel pass for training and scoring, and a sequential
stepper for coding and sampling.

Models are pure ``torch.nn.Module``s: no files, no coder, no device policy.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Hashable
from typing import Any, ClassVar

import torch
from torch import nn

from ..distributions.base import Distribution

#: runner(key, fn) -> fn(): how a stepper runs its position-independent work (see Stepper).
StepRunner = Callable[[Hashable, Callable[[], torch.Tensor]], torch.Tensor]


class Stepper(abc.ABC):
    """Sequential evaluation of a model over a batch of tiles.

    The stepper owns ``canvas``: (B, C, H, W) uint8 on the model's device, holding every
    value decoded so far (positions not yet visited hold 0). The codec loop calls, for each
    pixel position in ``order()``: ``params_at(y, x)`` -> (B, P) distribution parameters
    for that pixel, which may only depend on canvas values earlier in the order; then
    ``write(y, x, values)`` with the (B, C) values decoded there.

    ``runner`` runs the part of a step that does not depend on the position except through
    a small key: ``runner(key, fn)`` returns ``fn()``. The default calls it; on CUDA the
    codec installs one that captures ``fn`` once per key as a CUDA graph and replays it
    (see runtime.GraphRunner). A stepper that hands work to the runner must keep every
    tensor ``fn`` reads or writes alive and in place for its lifetime, and feed positions
    to ``fn`` through such tensors (filled before the call), never through Python values.
    """

    def __init__(self, model: LikelihoodModel, batch: int, height: int, width: int) -> None:
        p = next(model.parameters(), None)
        if p is None:  # integer models hold buffers only
            p = next(model.buffers(), None)
        device = p.device if p is not None else torch.device("cpu")
        self.model = model
        self.runner: StepRunner = run_now
        #: The tensor params_at returns at every step, if it is always the same one.
        self.params_buffer: torch.Tensor | None = None
        self.canvas = torch.zeros(
            batch, model.channels, height, width, dtype=torch.uint8, device=device
        )

    @property
    def distribution(self) -> Distribution:
        return self.model.distribution

    @property
    def padding(self) -> str:
        return self.model.padding

    def order(self) -> list[tuple[int, int]]:
        """Pixel positions in coding order. Default: raster order."""
        _, _, h, w = self.canvas.shape
        return [(y, x) for y in range(h) for x in range(w)]

    @abc.abstractmethod
    def params_at(self, y: int, x: int) -> torch.Tensor:
        """(B, P) float32 parameters of the pixel at (y, x) given the canvas."""

    def write(self, y: int, x: int, values: torch.Tensor) -> None:
        """values: (B, C) integer in [0, 255], the pixel values at (y, x)."""
        self.canvas[:, :, y, x] = values.to(self.canvas.dtype)


def run_now(key: Hashable, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The default step runner: just run ``fn``."""
    return fn()


class NaiveStepper(Stepper):
    """Re-runs the whole parallel pass at every step: O(pixels^2), but obviously right.
    The reference for cached steppers, and the stepper of cheap models."""

    def params_at(self, y: int, x: int) -> torch.Tensor:
        return self.model.params(self.canvas)[:, :, y, x].float()


class LikelihoodModel(nn.Module, abc.ABC):
    """An autoregressive model p(x) = prod_i p(x_i | x_<i) over (B, C, H, W) uint8 images.

    Subclasses set ``family`` and ``Config`` (a dataclass with a ``channels`` field), take
    the config as their only constructor argument, and define ``distribution``.
    """

    family: ClassVar[str]
    Config: ClassVar[type]
    #: Tile size the model is restricted to (MADE), or None for any size.
    fixed_tile: ClassVar[tuple[int, int] | None] = None
    #: How tile positions outside the image are filled when coding: "edge" replicates the
    #: nearest image pixel (needs an order in which it comes first: raster), "zero" writes 0.
    padding: ClassVar[str] = "edge"

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @property
    def channels(self) -> int:
        return int(self.config.channels)

    @property
    @abc.abstractmethod
    def distribution(self) -> Distribution: ...

    @abc.abstractmethod
    def params(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) uint8 in [0, 255] -> (B, P, H, W) float distribution parameters,
        where the parameters at a pixel depend only on pixels before it in coding order."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) uint8 -> (B, C, H, W) log-likelihood per subpixel, nats."""
        return self.distribution.log_prob(self.params(x), x)

    def stepper(self, batch: int, height: int, width: int) -> Stepper:
        """A stepper over ``batch`` tiles of ``height`` x ``width``. Default: naive."""
        return NaiveStepper(self, batch, height, width)

    def integrity_problem(self) -> str | None:
        """What is wrong with loaded weights beyond dtypes and shapes (integer models:
        shifts, tables, exactness bounds), as one line; None if nothing. Model files call
        it at load."""
        return None

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


def bits_per_subpixel(log_prob_nats: torch.Tensor) -> float:
    """Mean negative log-likelihood in bits per subpixel of a log-prob tensor (any shape)."""
    return float(-log_prob_nats.double().mean() / torch.log(torch.tensor(2.0, dtype=torch.float64)))


# --- Config validation ----------------------------------------------------------------------
# Model files store a family's config as JSON, and a file's author controls every value: a
# value of the wrong type must not reach the family's constructor (a float size, a string
# channel count, ``true`` for an int), nor a size that makes building the model hang or
# allocate without bound. The checks here are generic, driven by the Config dataclass's
# field annotations, so they apply to any family; modelfile.py bounds the memory a
# (well-typed) config may make the constructor allocate.

#: Integers in a config must lie strictly within +-CONFIG_INT_LIMIT (they fit an int64, and
#: no family loops over or allocates anything near that many; modelfile bounds the rest).
CONFIG_INT_LIMIT = 2**63
#: Most items of a list/tuple config value, and most characters of a str one.
MAX_CONFIG_ITEMS = 4096
MAX_CONFIG_STR = 4096


def config_problem(config_cls: type, values: object) -> str | None:
    """The first thing wrong with ``values`` (a decoded JSON object) as the keyword
    arguments of the dataclass ``config_cls``, as a one-line message; None if every field
    is present with a value of its annotated type, and nothing else is.

    Types are strict: ``bool`` is not an ``int``; a ``float`` field takes an int or a finite
    float; a ``tuple[...]`` field takes a JSON list. An annotation this does not know
    (``Any``, a class) accepts any value, left to the config's own checks."""
    if not dataclasses.is_dataclass(config_cls):
        return f"{getattr(config_cls, '__name__', config_cls)!r} is not a config dataclass"
    if not isinstance(values, dict):
        return f"config must be a JSON object, not {_json_type(values)}"
    fields = [f for f in dataclasses.fields(config_cls) if f.init]
    names = {f.name for f in fields}
    unknown = sorted(str(k) for k in values if k not in names)
    if unknown:
        return f"unknown config key(s) {', '.join(map(repr, unknown[:5]))}"
    missing = [f.name for f in fields if f.name not in values]
    if missing:
        return f"missing config key(s) {', '.join(map(repr, missing[:5]))}"
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: types unchecked
        hints = {}
    for f in fields:
        problem = _value_problem(values[f.name], hints.get(f.name, Any))
        if problem is not None:
            return f"config {f.name!r}: {problem}"
    return None


def _json_type(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        tuple: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _value_problem(value: object, hint: object, depth: int = 0) -> str | None:
    """None if ``value`` fits the annotation ``hint``, else why not."""
    if depth > 8:
        return "nested too deeply"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return None
    if origin in (typing.Union, types.UnionType):
        problems = [_value_problem(value, a, depth + 1) for a in args]
        if any(p is None for p in problems):
            return None
        return " or ".join(p for p in problems if p is not None)
    if origin is typing.Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return None
        return f"must be one of {', '.join(map(repr, args))}, not {value!r}"[:200]
    if hint is type(None) or hint is None:
        return None if value is None else f"must be null, not {_json_type(value)}"
    if hint is bool:
        return None if type(value) is bool else f"must be a boolean, not {_json_type(value)}"
    if hint is int:
        if type(value) is not int:
            return f"must be an integer, not {_json_type(value)}"
        if not -CONFIG_INT_LIMIT < value < CONFIG_INT_LIMIT:
            return "integer out of range"
        return None
    if hint is float:
        if type(value) is int:
            return None if -CONFIG_INT_LIMIT < value < CONFIG_INT_LIMIT else "out of range"
        if type(value) is not float:
            return f"must be a number, not {_json_type(value)}"
        return None if math.isfinite(value) else f"must be finite, not {value}"
    if hint is str:
        if type(value) is not str:
            return f"must be a string, not {_json_type(value)}"
        return None if len(value) <= MAX_CONFIG_STR else "string too long"
    if origin in (tuple, list) or hint in (tuple, list):
        if type(value) not in (list, tuple):
            return f"must be a list, not {_json_type(value)}"
        if len(value) > MAX_CONFIG_ITEMS:
            return f"list of {len(value)} items (at most {MAX_CONFIG_ITEMS})"
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return f"must be a list of {len(args)} items, not {len(value)}"
            item_hints = list(args)
        else:
            item_hints = [args[0] if args else Any] * len(value)
        for i, (item, h) in enumerate(zip(value, item_hints, strict=True)):
            problem = _value_problem(item, h, depth + 1)
            if problem is not None:
                return f"item {i} {problem}"
        return None
    if origin is dict or hint is dict:
        if type(value) is not dict:
            return f"must be an object, not {_json_type(value)}"
        if len(value) > MAX_CONFIG_ITEMS:
            return f"object of {len(value)} keys (at most {MAX_CONFIG_ITEMS})"
        value_hint = args[1] if len(args) == 2 else Any
        for k, v in value.items():
            problem = _value_problem(v, value_hint, depth + 1)
            if problem is not None:
                return f"key {str(k)[:40]!r} {problem}"
        return None
    return None  # an annotation not known here: the config class checks it itself
