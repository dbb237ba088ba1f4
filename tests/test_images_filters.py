"""The filter registry and chain specs: parsing, typed parameters, errors, names, built-ins."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from image_helpers import noise
from PIL import Image

from batchcore.processors.errors import FilterError, FilterSpecError
from batchcore.processors.images import filters as images_filters
from batchcore.processors.images.filters import (
    SEPIA,
    get_filter,
    list_filters,
    parse_chain,
    parse_chains,
    register_filter,
)

BUILT_IN = [
    "grayscale",
    "sepia",
    "blur",
    "gaussian_blur",
    "box_blur",
    "sharpen",
    "unsharp",
    "edge",
    "emboss",
    "contour",
    "invert",
    "autocontrast",
    "equalize",
    "posterize",
    "brightness",
    "contrast",
    "saturation",
    "rotate",
    "flip",
    "mirror",
    "resize",
    "thumbnail",
]


@pytest.fixture
def registry() -> dict[str, images_filters.FilterInfo]:
    """The registry, restored after the test (so test filters do not leak)."""
    saved = dict(images_filters._REGISTRY)
    yield images_filters._REGISTRY
    images_filters._REGISTRY.clear()
    images_filters._REGISTRY.update(saved)


# --- parsing -----------------------------------------------------------------------------------


def test_every_issue_filter_is_built_in() -> None:
    names = {info.name for info in list_filters()}
    assert set(BUILT_IN) <= names
    assert [info.name for info in list_filters()] == sorted(names)
    assert all(info.doc for info in list_filters())


@pytest.mark.parametrize(
    ("spec", "normalised", "label"),
    [
        ("grayscale", "grayscale", "grayscale"),
        ("grayscale|blur", "grayscale|blur", "grayscale-blur"),
        (" grayscale | blur ", "grayscale|blur", "grayscale-blur"),
        ("blur:radius=3|grayscale", "blur:radius=3|grayscale", "blur-radius3-grayscale"),
        ("thumbnail:size=256", "thumbnail:size=256", "thumbnail-size256"),
        ("thumbnail:size=320x240", "thumbnail:size=320x240", "thumbnail-size320x240"),
        ("rotate:angle=-90", "rotate:angle=-90", "rotate-angle-90"),
        (
            "unsharp:threshold=2, radius=1.5",
            "unsharp:radius=1.5,threshold=2",
            "unsharp-radius1.5-threshold2",
        ),
        ("rotate:angle=45,expand=no", "rotate:angle=45,expand=no", "rotate-angle45-expandno"),
    ],
)
def test_spec_normalised_and_file_name_part(spec: str, normalised: str, label: str) -> None:
    chain = parse_chain(spec)
    assert chain.spec == str(chain) == normalised
    assert chain.label == label


@pytest.mark.parametrize(
    ("spec", "name", "kwargs"),
    [
        ("blur:radius=3", "blur", {"radius": 3.0}),
        ("posterize:bits=2", "posterize", {"bits": 2}),
        ("thumbnail:size=64", "thumbnail", {"size": (64, 64)}),
        ("thumbnail:size=320X240", "thumbnail", {"size": (320, 240)}),
        ("rotate:expand=false", "rotate", {"expand": False}),
        ("rotate:expand=YES", "rotate", {"expand": True}),
        ("resize:size=100x0", "resize", {"size": (100, 0)}),
    ],
)
def test_parameters_are_typed_from_the_signature(
    spec: str, name: str, kwargs: dict[str, object]
) -> None:
    (step,) = parse_chain(spec).steps
    assert step.name == name
    assert dict(step.kwargs) == kwargs
    assert all(type(value) is type(kwargs[key]) for key, value in step.kwargs)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty filter spec"),
        ("  ", "empty filter spec"),
        ("grayscale||blur", "empty step in filter spec 'grayscale||blur'"),
        ("grayscale|", "empty step"),
        ("blurr", "unknown filter 'blurr'; did you mean blur, box_blur?"),
        ("grayscale|sepiaa", "unknown filter 'sepiaa'; did you mean sepia?"),
        ("xyzzy", "unknown filter 'xyzzy'; known: autocontrast, blur, "),
        ("blur:size=3", "filter 'blur': no parameter 'size' (its parameters: radius=2.0 (float"),
        ("grayscale:radius=3", "no parameter 'radius' (its parameters: none)"),
        ("blur:radius=abc", "filter 'blur': radius='abc' is not a valid float"),
        ("posterize:bits=2.5", "bits='2.5' is not a valid int"),
        ("posterize:bits=9", "filter 'posterize': bits='9' is out of range (int 1..8)"),
        ("posterize:bits=0", "out of range (int 1..8)"),
        ("blur:radius=nan", "not a valid float"),
        ("blur:radius=-1", "out of range (float 0..1000)"),
        ("thumbnail:size=320x", "size='320x' is not a valid size (N or WxH) (e.g. 256 or 320x240)"),
        ("thumbnail:size=0", "out of range"),
        ("rotate:expand=maybe", "expand='maybe' is not a valid bool"),
        ("blur:3", "filter 'blur': expected key=value, got '3'"),
        ("blur:radius=1,radius=2", "'radius' is given twice"),
        ("grayscale|blur:radius=x", "filter 'blur' in 'grayscale|blur:radius=x': radius='x'"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(FilterSpecError) as caught:
        parse_chain(spec)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_parse_chains_checks_all_and_drops_duplicates() -> None:
    chains = parse_chains(
        [
            "grayscale",
            "blur",
            "grayscale",
            "unsharp:threshold=1,radius=1",
            "unsharp:radius=1,threshold=1",
        ]
    )
    assert [chain.spec for chain in chains] == ["grayscale", "blur", "unsharp:radius=1,threshold=1"]
    with pytest.raises(FilterSpecError, match="nope"):
        parse_chains(["grayscale", "nope"])


def test_draft_size_only_for_chains_starting_with_thumbnail() -> None:
    assert parse_chain("thumbnail").draft_size == (512, 512)
    assert parse_chain("thumbnail:size=320x240|sepia").draft_size == (640, 480)
    assert parse_chain("sepia|thumbnail").draft_size is None
    assert parse_chain("resize").draft_size is None


def test_chains_pickle_by_reference() -> None:
    chain = parse_chain("blur:radius=3|thumbnail:size=64")
    again = pickle.loads(pickle.dumps(chain))
    assert again == chain
    assert again.steps[0].function is images_filters.blur


# --- registration ------------------------------------------------------------------------------


def test_register_a_filter_and_use_it(registry: dict[str, object]) -> None:
    @register_filter("tint", ranges={"amount": (0, 255)})
    def tint(
        image: Image.Image, amount: int = 10, size: tuple[int, int] = (1, 2), how: str = "add"
    ) -> Image.Image:
        """Add ``amount`` to the red band."""
        red, green, blue = image.convert("RGB").split()
        return Image.merge("RGB", (red.point(lambda v: min(255, v + amount)), green, blue))

    info = get_filter("tint")
    assert info.function is tint
    assert info.doc == "Add ``amount`` to the red band."
    assert [p.describe() for p in info.params] == [
        "amount=10 (int 0..255)",
        "size=1x2 (size (N or WxH))",
        "how=add (str)",
    ]
    out = parse_chain("tint:amount=5|grayscale").apply(Image.new("RGB", (2, 2), (10, 20, 30)))
    assert out.mode == "L"
    with pytest.raises(FilterSpecError, match="out of range"):
        parse_chain("tint:amount=300")


def test_re_registering_a_name_needs_replace(registry: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"'blur' is already registered.*replace=True"):
        register_filter("blur")(images_filters.gaussian_blur)

    @register_filter("blur", replace=True)
    def sharper_blur(image: Image.Image, radius: float = 1.0) -> Image.Image:
        return image.copy()

    assert get_filter("blur").function is sharper_blur


@pytest.mark.parametrize(
    ("define", "message"),
    [
        ("def f(): pass", "must take the image as its first argument"),
        ("def f(image, radius): pass", "parameter 'radius' needs a default value"),
        ("def f(image, *rest): pass", "*args and **kwargs"),
        ("def f(image, items=[1]): pass", "parameter 'items' must be int, float, bool, str"),
        ("def f(image, x: list = None): pass", "parameter 'x' must be int"),
    ],
)
def test_bad_filter_functions_are_rejected_at_registration(
    registry: dict[str, object], define: str, message: str
) -> None:
    namespace: dict[str, object] = {}
    exec(define, namespace)
    with pytest.raises(TypeError, match=message.replace("*", r"\*")):
        register_filter("bad_one")(namespace["f"])  # type: ignore[arg-type]
    assert "bad_one" not in registry


@pytest.mark.parametrize("name", ["Blur", "1blur", "my-filter", "a b", ""])
def test_filter_names_are_checked(name: str) -> None:
    with pytest.raises(ValueError, match="filter name must be"):
        register_filter(name)


def test_a_failing_step_names_the_image_and_the_step(registry: dict[str, object]) -> None:
    @register_filter("boom")
    def boom(image: Image.Image) -> Image.Image:
        raise ZeroDivisionError("no")

    @register_filter("not_an_image")
    def not_an_image(image: Image.Image) -> Image.Image:
        return "pixels"  # type: ignore[return-value]

    image = Image.new("RGB", (4, 4))
    with pytest.raises(FilterError, match=r"^a\.jpg: filter 'boom' failed: ZeroDivisionError: no$"):
        parse_chain("grayscale|boom").apply(image, "a.jpg")
    with pytest.raises(FilterError, match="filter 'not_an_image' failed: returned str"):
        parse_chain("not_an_image").apply(image, "a.jpg")
    error = FilterError("a.jpg", "boom", "no")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


# --- the built-in filters ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA"])
@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_runs_on_every_working_mode(name: str, mode: str) -> None:
    image = noise(mode, (40, 30), seed=3)
    chain = parse_chain(name)
    first = chain.apply(image)
    assert first.mode in ("L", "LA", "RGB", "RGBA")
    assert first.mode.endswith("A") == mode.endswith("A")  # alpha is never added nor lost
    again = chain.apply(noise(mode, (40, 30), seed=3))
    assert np.array_equal(np.asarray(first), np.asarray(again))  # deterministic
    assert np.array_equal(
        np.asarray(image), np.asarray(noise(mode, (40, 30), seed=3))
    )  # input kept


@pytest.mark.parametrize("mode", ["P", "PA", "1", "I;16", "CMYK", "I", "F", "YCbCr"])
def test_other_modes_are_converted_before_each_step(mode: str) -> None:
    out = parse_chain("blur|sepia").apply(noise("RGB", (16, 16)).convert(mode))
    assert out.mode in ("RGB", "RGBA")


def test_pixel_filters_keep_alpha_and_geometric_filters_move_it() -> None:
    image = noise("RGBA", (40, 30), seed=4)
    alpha = np.asarray(image.getchannel("A"))
    for name in ["grayscale", "sepia", "blur", "sharpen", "invert", "equalize", "brightness"]:
        assert np.array_equal(np.asarray(parse_chain(name).apply(image).getchannel("A")), alpha)
    flipped = parse_chain("mirror").apply(image)
    assert np.array_equal(np.asarray(flipped.getchannel("A")), alpha[:, ::-1])


def test_sepia_is_the_classic_matrix() -> None:
    image = noise("RGB", (32, 24), seed=5)
    rgb = np.asarray(image, dtype=np.float64)
    matrix = np.array(SEPIA).reshape(3, 4)[:, :3]
    expected = np.clip(rgb @ matrix.T, 0, 255)
    out = np.asarray(parse_chain("sepia").apply(image), dtype=np.float64)
    assert np.abs(out - expected).max() <= 1.0  # Pillow rounds in fixed point
    assert matrix[0].tolist() == [0.393, 0.769, 0.189]


def test_geometry_filters() -> None:
    image = noise("RGB", (40, 30))
    array = np.asarray(image)
    assert np.array_equal(np.asarray(parse_chain("rotate").apply(image)), np.rot90(array))
    assert parse_chain("rotate:angle=-90").apply(image).size == (30, 40)
    assert parse_chain("rotate:angle=360").apply(image).size == (40, 30)
    assert parse_chain("rotate:angle=45").apply(image).size == (50, 50)
    assert parse_chain("rotate:angle=45,expand=false").apply(image).size == (40, 30)
    assert np.array_equal(np.asarray(parse_chain("flip").apply(image)), array[::-1])
    assert np.array_equal(np.asarray(parse_chain("mirror").apply(image)), array[:, ::-1])
    assert parse_chain("resize").apply(image).size == (20, 15)
    assert parse_chain("resize:scale=2").apply(image).size == (80, 60)
    assert parse_chain("resize:size=10x20").apply(image).size == (10, 20)
    assert parse_chain("resize:size=20x0").apply(image).size == (20, 15)
    assert parse_chain("resize:size=0x15").apply(image).size == (20, 15)
    assert parse_chain("thumbnail:size=20").apply(image).size == (20, 15)
    assert parse_chain("thumbnail:size=100").apply(image).size == (40, 30)  # never enlarges


def test_grayscale_chain_then_blur() -> None:
    image = noise("RGB", (30, 20))
    by_chain = parse_chain("grayscale|blur:radius=1").apply(image)
    by_hand = parse_chain("blur:radius=1").apply(parse_chain("grayscale").apply(image))
    assert by_chain.mode == "L"
    assert np.array_equal(np.asarray(by_chain), np.asarray(by_hand))
