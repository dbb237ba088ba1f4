"""Image filters by name: a registry of ``Image -> Image`` functions with typed parameters, and
chains such as ``grayscale|blur:radius=3``, parsed and checked before any work starts.

    @register_filter("vignette")
    def vignette(image: Image.Image, strength: float = 0.5) -> Image.Image:
        '''Darken the corners.'''
        ...

    chain = parse_chain("blur:radius=3|grayscale")
    chain.apply(image)      # one image in, one image out
    chain.label             # "blur-radius3-grayscale": the part of the output file name

A spec is ``name`` or ``name:key=value,key=value``; steps are joined by ``|``. Parameters take
their type from the function's annotations (or defaults): int, float, bool, str, or a size
(``256`` or ``320x240``, annotated ``tuple[int, int]``). Every built-in filter accepts the
working modes L, LA, RGB and RGBA (what ``io.load_image`` returns, and what ``apply``
converts any other mode to before each step); pixel filters change the colour bands and keep
alpha as it is, geometric filters move alpha with the pixels. All filters are deterministic.

``apply(image, source, max_pixels=N)`` caps every step's output at N pixels. A filter that
changes the size registers ``size=`` (its output size from the input's and its parameters), so
the cap holds before it allocates anything; any other is checked on its result.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ..errors import FilterError, FilterSpecError
from .io import to_working_mode

__all__ = [
    "FilterChain",
    "FilterInfo",
    "FilterParam",
    "FilterStep",
    "Size",
    "check_output_size",
    "get_filter",
    "list_filters",
    "parse_chain",
    "parse_chains",
    "register_filter",
]

Size = tuple[int, int]
FilterFunction = Callable[..., Image.Image]
SizeFunction = Callable[..., Size]  # (input size, **the filter's parameters) -> output size
F = TypeVar("F", bound=FilterFunction)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")  # anything else becomes "_" in an output file name
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


# --- parameters and the registry ---------------------------------------------------------------


@dataclass(frozen=True)
class FilterParam:
    """One keyword parameter of a filter: its type, default and allowed range (inclusive)."""

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None

    @property
    def type_name(self) -> str:
        return "size (N or WxH)" if self.kind is tuple else self.kind.__name__

    def describe(self) -> str:
        """``radius=2.0 (float >= 0)``: how ``--list-filters`` shows it."""
        text = f"{self.name}={show_value(self.default)} ({self.type_name}"
        if self.low is not None and self.high is not None:
            text += f" {show_value(self.low)}..{show_value(self.high)}"
        elif self.low is not None:
            text += f" >= {show_value(self.low)}"
        elif self.high is not None:
            text += f" <= {show_value(self.high)}"
        return text + ")"

    def parse(self, text: str, where: str) -> Any:
        """The typed value of ``text``; ``FilterSpecError`` saying what was expected."""
        value = self._convert(text.strip())
        if value is None:
            raise FilterSpecError(
                f"{where}: {self.name}={text!r} is not a valid {self.type_name}"
                + (" (e.g. 256 or 320x240)" if self.kind is tuple else "")
            )
        numbers = value if isinstance(value, tuple) else (value,)
        if self.kind in (int, float, tuple) and any(
            (self.low is not None and n < self.low) or (self.high is not None and n > self.high)
            for n in numbers
        ):
            bounds = self.describe().partition("(")[2].rstrip(")")
            raise FilterSpecError(f"{where}: {self.name}={text!r} is out of range ({bounds})")
        return value

    def _convert(self, text: str) -> Any:
        try:
            if self.kind is bool:
                lowered = text.lower()
                return True if lowered in _TRUE else False if lowered in _FALSE else None
            if self.kind is int:
                return int(text)
            if self.kind is float:
                number = float(text)
                return number if math.isfinite(number) else None
            if self.kind is tuple:
                width, sep, height = text.lower().partition("x")
                return (int(width), int(height if sep else width))
        except ValueError:
            return None
        return text


@dataclass(frozen=True)
class FilterInfo:
    """A registered filter: its name, function, parameters and one-line description."""

    name: str
    function: FilterFunction
    params: tuple[FilterParam, ...]
    doc: str
    size: SizeFunction | None = None  # the output size, when it is not the input's

    def param(self, name: str) -> FilterParam | None:
        return next((p for p in self.params if p.name == name), None)


_REGISTRY: dict[str, FilterInfo] = {}


def register_filter(
    name: str,
    *,
    replace: bool = False,
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
    size: SizeFunction | None = None,
) -> Callable[[F], F]:
    """Register ``function(image, **params) -> image`` under ``name``; returns it unchanged.

    Parameters after the image need defaults; ``ranges`` bounds numbers (``{"bits": (1, 8)}``).
    A filter whose output size differs from its input's gives ``size(input_size, **params)``,
    so that ``max_pixels`` is checked before it runs.
    The function must return a new image and leave its input alone (one decode is shared by
    all the chains of an image). A taken name is a ``ValueError`` unless ``replace=True``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"filter name must be lowercase letters, digits and _, starting with a letter; "
            f"got {name!r}"
        )

    def decorator(function: F) -> F:
        if name in _REGISTRY and not replace:
            raise ValueError(
                f"a filter named {name!r} is already registered "
                f"({_qualname(_REGISTRY[name].function)}); pass replace=True to replace it"
            )
        params = _params_of(name, function, ranges or {})
        doc = inspect.getdoc(function) or ""
        _REGISTRY[name] = FilterInfo(name, function, params, doc.strip().split("\n")[0], size)
        return function

    return decorator


def _qualname(function: Any) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', function)}"


def _params_of(
    name: str, function: FilterFunction, ranges: Mapping[str, tuple[float | None, float | None]]
) -> tuple[FilterParam, ...]:
    """The typed keyword parameters of a filter function, checked at registration."""
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not parameters or parameters[0].kind not in positional:
        raise TypeError(f"filter {name!r}: the function must take the image as its first argument")
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # annotations that do not resolve: fall back to the defaults' types
        hints = {}
    params = []
    for parameter in parameters[1:]:
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"filter {name!r}: *args and **kwargs cannot be given in a spec")
        if parameter.default is inspect.Parameter.empty:
            raise TypeError(f"filter {name!r}: parameter {parameter.name!r} needs a default value")
        kind = _kind_of(hints.get(parameter.name), parameter.default)
        if kind is None:
            raise TypeError(
                f"filter {name!r}: parameter {parameter.name!r} must be int, float, bool, str "
                f"or tuple[int, int] (a size), got {hints.get(parameter.name, parameter.default)!r}"
            )
        low, high = ranges.get(parameter.name, (None, None))
        default = float(parameter.default) if kind is float else parameter.default
        params.append(FilterParam(parameter.name, kind, default, low, high))
    unknown = set(ranges) - {p.name for p in params}
    if unknown:
        raise TypeError(f"filter {name!r}: ranges name unknown parameters {sorted(unknown)}")
    return tuple(params)


def _kind_of(hint: Any, default: Any) -> type | None:
    if hint in (bool, int, float, str):
        return typing.cast(type, hint)
    if hint == tuple[int, int]:
        return tuple
    if hint is not None:
        return None
    if isinstance(default, bool | int | float | str):
        return type(default)
    if isinstance(default, tuple) and len(default) == 2 and all(type(n) is int for n in default):
        return tuple
    return None


def get_filter(name: str) -> FilterInfo:
    """The registered filter ``name``; ``FilterSpecError`` listing close matches otherwise."""
    info = _REGISTRY.get(name)
    if info is None:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.6)
        if close:
            raise FilterSpecError(f"unknown filter {name!r}; did you mean {', '.join(close)}?")
        raise FilterSpecError(f"unknown filter {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return info


def list_filters() -> list[FilterInfo]:
    """Every registered filter, sorted by name (what ``--list-filters`` shows)."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def show_value(value: Any) -> str:
    """A parameter value as it would be typed in a spec (``320x240`` for a size)."""
    if isinstance(value, tuple):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


# --- chains ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterStep:
    """One filter of a chain with the parameter values given (the rest keep their defaults)."""

    name: str
    function: FilterFunction
    kwargs: tuple[tuple[str, Any], ...]
    texts: tuple[tuple[str, str], ...]  # the values as typed, for the spec and the file name
    size: SizeFunction | None = None  # FilterInfo.size

    @property
    def spec(self) -> str:
        """``blur:radius=3``: this step as a spec, parameters in the function's order."""
        if not self.texts:
            return self.name
        return f"{self.name}:" + ",".join(f"{key}={text}" for key, text in self.texts)

    @property
    def label(self) -> str:
        """``blur-radius3``: this step in an output file name."""
        parts = [self.name, *(f"{key}{_UNSAFE.sub('_', text)}" for key, text in self.texts)]
        return "-".join(parts)

    def apply(self, image: Image.Image) -> Image.Image:
        return self.function(image, **dict(self.kwargs))

    def output_size(self, size: Size) -> Size:
        """The size this step makes of an input of ``size`` (the same unless it says)."""
        return size if self.size is None else self.size(size, **dict(self.kwargs))


@dataclass(frozen=True)
class FilterChain:
    """Filters applied in order to one image, giving one output (``grayscale|blur``)."""

    steps: tuple[FilterStep, ...]

    @property
    def spec(self) -> str:
        """The normalised spec: ``blur:radius=3|grayscale``."""
        return "|".join(step.spec for step in self.steps)

    @property
    def label(self) -> str:
        """The output file-name part: steps joined by ``-``, each ``name-key<value>...``.

        ``grayscale|blur`` -> ``grayscale-blur``; ``blur:radius=3|grayscale`` ->
        ``blur-radius3-grayscale``; characters other than letters, digits, ``.``, ``_``, ``+``
        and ``-`` in values become ``_``.
        """
        return "-".join(step.label for step in self.steps)

    @property
    def draft_size(self) -> Size | None:
        """For a chain starting with the built-in ``thumbnail``: the size JPEG's reduced-size
        decoding (``draft``) may decode to, as Pillow's own ``thumbnail()`` asks for it."""
        first = self.steps[0]
        if first.function is not thumbnail:
            return None
        width, height = dict(first.kwargs).get("size", THUMBNAIL_SIZE)
        return (width * 2, height * 2)  # Pillow's reducing_gap=2.0

    def apply(
        self, image: Image.Image, source: str = "<image>", max_pixels: int | None = None
    ) -> Image.Image:
        """Run every step; a step that raises, or whose output would have more than
        ``max_pixels`` pixels (``None``: no cap), becomes ``FilterError`` naming ``source``."""
        for step in self.steps:
            try:
                check_output_size(source, step, step.output_size(image.size), max_pixels)
                result: Any = step.apply(to_working_mode(image))
            except FilterError:
                raise
            except Exception as exc:
                raise FilterError(source, step.spec, f"{type(exc).__name__}: {exc}") from exc
            if not isinstance(result, Image.Image):
                kind = type(result).__name__
                raise FilterError(source, step.spec, f"returned {kind}, not an image")
            check_output_size(source, step, result.size, max_pixels)
            image = result
        return image

    def __str__(self) -> str:
        return self.spec


def check_output_size(
    source: str, step: FilterStep, size: Size, max_pixels: int | None, frames: int = 1
) -> None:
    """``FilterError`` if ``frames`` outputs of ``size`` from ``step`` exceed ``max_pixels``."""
    width, height = size
    pixels = width * height * frames
    if max_pixels is None or pixels <= max_pixels:
        return
    what = f"{width}x{height}" if frames == 1 else f"{frames} frames of {width}x{height}"
    raise FilterError(
        source,
        step.spec,
        f"its output would be {what} ({pixels:,} pixels), over the limit of {max_pixels:,} "
        "(max_pixels / --max-pixels)",
    )


def parse_chain(spec: str) -> FilterChain:
    """Parse and check ``name[:key=value,...][|name...]``; ``FilterSpecError`` if it cannot run."""
    if not isinstance(spec, str):
        raise TypeError(f"a filter spec must be a str, got {type(spec).__name__}")
    if not spec.strip():
        raise FilterSpecError("empty filter spec")
    steps = []
    for part in spec.split("|"):
        if not part.strip():
            raise FilterSpecError(f"empty step in filter spec {spec!r}")
        steps.append(_parse_step(part.strip(), spec))
    return FilterChain(tuple(steps))


def _parse_step(text: str, spec: str) -> FilterStep:
    name, _, arguments = text.partition(":")
    name = name.strip()
    info = get_filter(name)
    where = f"filter {name!r} in {spec!r}" if spec != text else f"filter {name!r}"
    given: dict[str, str] = {}
    for argument in arguments.split(",") if arguments.strip() else []:
        key, sep, value = argument.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FilterSpecError(f"{where}: expected key=value, got {argument.strip()!r}")
        param = info.param(key)
        if param is None:
            known = ", ".join(p.describe() for p in info.params) or "none"
            raise FilterSpecError(f"{where}: no parameter {key!r} (its parameters: {known})")
        if key in given:
            raise FilterSpecError(f"{where}: {key!r} is given twice")
        given[key] = value.strip()
    kwargs, texts = [], []
    for param in info.params:  # the function's order, so equal specs get equal names
        if param.name in given:
            kwargs.append((param.name, param.parse(given[param.name], where)))
            texts.append((param.name, given[param.name]))
    return FilterStep(name, info.function, tuple(kwargs), tuple(texts), info.size)


def parse_chains(specs: Iterable[str]) -> list[FilterChain]:
    """Parse every spec (all are checked before any work); identical specs count once."""
    chains: dict[str, FilterChain] = {}
    for spec in specs:
        chain = parse_chain(spec)
        chains.setdefault(chain.spec, chain)
    return list(chains.values())


# --- the built-in filters ----------------------------------------------------------------------

SEPIA = (0.393, 0.769, 0.189, 0.0, 0.349, 0.686, 0.168, 0.0, 0.272, 0.534, 0.131, 0.0)
THUMBNAIL_SIZE: Size = (256, 256)
_MAX_SIDE = 65_535  # JPEG's limit, and far more than any sane output


def colour_only(image: Image.Image, change: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """Apply ``change`` to the colour bands only; alpha (LA, RGBA) is put back unchanged."""
    if image.mode not in ("LA", "RGBA"):
        return change(image)
    alpha = image.getchannel("A")
    result = change(image.convert(image.mode[:-1]))
    result.putalpha(alpha)
    return result


def _filtered(
    image: Image.Image, kernel: ImageFilter.Filter | type[ImageFilter.Filter]
) -> Image.Image:
    """``image.filter(kernel)`` on the colour bands only."""
    return colour_only(image, lambda im: im.filter(kernel))


@register_filter("grayscale")
def grayscale(image: Image.Image) -> Image.Image:
    """Luminance only (ITU-R 601-2 luma); alpha kept."""
    return colour_only(image, lambda im: im.convert("L"))


@register_filter("sepia")
def sepia(image: Image.Image) -> Image.Image:
    """The classic sepia tone matrix (0.393 0.769 0.189 / 0.349 0.686 0.168 / 0.272 0.534 0.131)."""
    return colour_only(image, lambda im: im.convert("RGB").convert("RGB", SEPIA))


@register_filter("blur", ranges={"radius": (0, 1000)})
def blur(image: Image.Image, radius: float = 2.0) -> Image.Image:
    """Gaussian blur (the same as gaussian_blur)."""
    return gaussian_blur(image, radius)


@register_filter("gaussian_blur", ranges={"radius": (0, 1000)})
def gaussian_blur(image: Image.Image, radius: float = 2.0) -> Image.Image:
    """Gaussian blur with standard deviation ``radius`` pixels."""
    return _filtered(image, ImageFilter.GaussianBlur(radius))


@register_filter("box_blur", ranges={"radius": (0, 1000)})
def box_blur(image: Image.Image, radius: float = 2.0) -> Image.Image:
    """Box blur: the mean of a (2 * radius + 1) square around each pixel."""
    return _filtered(image, ImageFilter.BoxBlur(radius))


@register_filter("sharpen")
def sharpen(image: Image.Image) -> Image.Image:
    """Pillow's 3x3 sharpening kernel."""
    return _filtered(image, ImageFilter.SHARPEN)


@register_filter(
    "unsharp", ranges={"radius": (0, 1000), "percent": (0, 10_000), "threshold": (0, 255)}
)
def unsharp(
    image: Image.Image, radius: float = 2.0, percent: int = 150, threshold: int = 3
) -> Image.Image:
    """Unsharp mask: add ``percent`` of the detail finer than ``radius`` above ``threshold``."""
    return _filtered(image, ImageFilter.UnsharpMask(radius, percent, threshold))


@register_filter("edge")
def edge(image: Image.Image) -> Image.Image:
    """Edges only (Pillow's FIND_EDGES kernel)."""
    return _filtered(image, ImageFilter.FIND_EDGES)


@register_filter("emboss")
def emboss(image: Image.Image) -> Image.Image:
    """Relief effect (Pillow's EMBOSS kernel)."""
    return _filtered(image, ImageFilter.EMBOSS)


@register_filter("contour")
def contour(image: Image.Image) -> Image.Image:
    """Contour lines (Pillow's CONTOUR kernel)."""
    return _filtered(image, ImageFilter.CONTOUR)


@register_filter("invert")
def invert(image: Image.Image) -> Image.Image:
    """Negative: each colour value v becomes 255 - v; alpha kept."""
    return colour_only(image, ImageOps.invert)


@register_filter("autocontrast", ranges={"cutoff": (0, 49)})
def autocontrast(image: Image.Image, cutoff: float = 0.0) -> Image.Image:
    """Stretch levels to the full range, ignoring ``cutoff`` percent at each end."""
    return colour_only(image, lambda im: ImageOps.autocontrast(im, cutoff=cutoff))


@register_filter("equalize")
def equalize(image: Image.Image) -> Image.Image:
    """Histogram equalisation: spread levels evenly."""
    return colour_only(image, ImageOps.equalize)


@register_filter("posterize", ranges={"bits": (1, 8)})
def posterize(image: Image.Image, bits: int = 4) -> Image.Image:
    """Keep ``bits`` bits per colour band."""
    return colour_only(image, lambda im: ImageOps.posterize(im, bits))


@register_filter("brightness", ranges={"factor": (0, 100)})
def brightness(image: Image.Image, factor: float = 1.5) -> Image.Image:
    """Scale brightness by ``factor`` (0 black, 1 unchanged)."""
    return colour_only(image, lambda im: ImageEnhance.Brightness(im).enhance(factor))


@register_filter("contrast", ranges={"factor": (0, 100)})
def contrast(image: Image.Image, factor: float = 1.5) -> Image.Image:
    """Scale contrast by ``factor`` (0 flat grey, 1 unchanged)."""
    return colour_only(image, lambda im: ImageEnhance.Contrast(im).enhance(factor))


@register_filter("saturation", ranges={"factor": (0, 100)})
def saturation(image: Image.Image, factor: float = 1.5) -> Image.Image:
    """Scale colour saturation by ``factor`` (0 grey, 1 unchanged)."""
    return colour_only(image, lambda im: ImageEnhance.Color(im).enhance(factor))


_QUARTER_TURNS = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


def rotated_size(size: Size, angle: float = 90.0, expand: bool = True) -> Size:
    """The size ``rotate`` gives (an upper bound by a pixel for angles off the quarter turns)."""
    width, height = size
    turns = angle % 360
    if not expand or turns in (0, 180):
        return size
    if turns in (90, 270):
        return (height, width)
    cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    return (math.ceil(width * cos + height * sin) + 1, math.ceil(width * sin + height * cos) + 1)


@register_filter("rotate", ranges={"angle": (-360, 360)}, size=rotated_size)
def rotate(image: Image.Image, angle: float = 90.0, expand: bool = True) -> Image.Image:
    """Rotate counter-clockwise by ``angle`` degrees (quarter turns exactly, others bicubic)."""
    turns = angle % 360
    if turns == 0:
        return image.copy()
    if turns in _QUARTER_TURNS and (expand or turns == 180):
        return image.transpose(_QUARTER_TURNS[int(turns)])
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=expand)


@register_filter("flip")
def flip(image: Image.Image) -> Image.Image:
    """Upside down (top to bottom)."""
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


@register_filter("mirror")
def mirror(image: Image.Image) -> Image.Image:
    """Left to right."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def resized_size(image_size: Size, size: Size = (0, 0), scale: float = 0.5) -> Size:
    """The size ``resize`` gives an image of ``image_size``."""
    width, height = image_size
    target_width, target_height = size
    if target_width and target_height:
        return (target_width, target_height)
    if target_width:
        return (target_width, max(1, round(height * target_width / width)))
    if target_height:
        return (max(1, round(width * target_height / height)), target_height)
    return (max(1, round(width * scale)), max(1, round(height * scale)))


@register_filter("resize", ranges={"size": (0, _MAX_SIDE), "scale": (0.001, 16)}, size=resized_size)
def resize(image: Image.Image, size: Size = (0, 0), scale: float = 0.5) -> Image.Image:
    """Resize to ``size`` (a side of 0 keeps the aspect ratio), else by ``scale`` (Lanczos)."""
    target = resized_size(image.size, size, scale)
    return image.resize(target, Image.Resampling.LANCZOS)


@register_filter("thumbnail", ranges={"size": (1, _MAX_SIDE)})
def thumbnail(image: Image.Image, size: Size = THUMBNAIL_SIZE) -> Image.Image:
    """Shrink to fit in ``size`` (never enlarges; keeps the aspect ratio); fast on JPEG."""
    result = image.copy()
    result.thumbnail(size)
    return result
