"""Image loading (every accepted form) and Qwen-VL resizing within min / max pixels."""

import base64

import numpy as np
import pytest
from PIL import Image

from mmr1_mega.data import BadRecord, load_image, make_image_processor, preprocess_images
from mmr1_mega.data.images import check_resized_size
from tests.data.conftest import png_bytes, random_image


def test_resized_images_stay_within_pixel_limits_and_patch_grid():
    rng = np.random.default_rng()
    min_px = int(rng.integers(1, 8)) * 28 * 28
    max_px = min_px + int(rng.integers(1, 30)) * 28 * 28
    ip = make_image_processor(min_px, max_px)
    for _ in range(6):
        image = random_image(rng, 5, 400)
        try:
            expected = check_resized_size(image.height, image.width, min_px, max_px)
        except BadRecord:
            continue  # too elongated for these limits: the loader skips it (next test)
        pixels, grid = preprocess_images([image], ip)
        t, h, w = grid[0].tolist()
        assert (h * 14, w * 14) == expected
        assert t == 1 and h % 2 == 0 and w % 2 == 0  # whole 2x2 merge groups
        assert (h * 14) * (w * 14) <= max_px
        if _rounded_area(image) <= max_px:  # not shrunk: rounding or scaling up keeps it >= min_pixels
            assert (h * 14) * (w * 14) >= min_px
        assert pixels.shape == (h * w, 3 * 2 * 14 * 14)


def _rounded_area(image):
    return round(image.height / 28) * 28 * round(image.width / 28) * 28


def test_shrinking_to_max_pixels_can_land_below_min_pixels_as_transformers_does():
    """smart_resize floors both sides when it shrinks, so with close limits the area can fall under
    min_pixels; the processor does the same, and the image is still usable (fewer tokens)."""
    from PIL import Image

    image = Image.new("RGB", (42, 42))
    assert _rounded_area(image) > 3 * 28 * 28
    assert check_resized_size(42, 42, 2 * 28 * 28, 3 * 28 * 28) == (28, 28)
    _, grid = preprocess_images([image], make_image_processor(2 * 28 * 28, 3 * 28 * 28))
    assert grid.tolist() == [[1, 2, 2]]


def test_elongated_image_that_would_resize_over_max_pixels_is_rejected():
    with pytest.raises(BadRecord, match="max_pixels"):
        check_resized_size(5, 400, 28 * 28, 3 * 28 * 28)
    assert check_resized_size(56, 84, 28 * 28, 56 * 84) == (56, 84)


def test_several_images_concatenate_their_patches():
    rng = np.random.default_rng()
    ip = make_image_processor(28 * 28, 112 * 112)
    images = [random_image(rng) for _ in range(3)]
    pixels, grid = preprocess_images(images, ip)
    assert grid.shape == (3, 3)
    assert pixels.shape[0] == int(grid.prod(dim=1).sum())


def test_every_accepted_image_form_decodes_to_the_same_pixels(tmp_path):
    image = random_image(np.random.default_rng())
    data = png_bytes(image)
    (tmp_path / "a.png").write_bytes(data)
    forms = [
        data,
        str(tmp_path / "a.png"),
        "a.png",  # relative to base_dir
        {"bytes": data, "path": None},
        {"bytes": None, "path": "a.png"},
        {"bytes": base64.b64encode(data).decode()},
        "data:image/png;base64," + base64.b64encode(data).decode(),
        image,
    ]
    expected = np.asarray(image)
    for form in forms:
        assert np.array_equal(np.asarray(load_image(form, str(tmp_path))), expected), type(form)


@pytest.mark.parametrize("value", [b"not an image", "missing.png", {"path": None}, 42, {"bytes": "%%%"}])
def test_unreadable_images_raise_bad_record(tmp_path, value):
    with pytest.raises(BadRecord) as e:
        load_image(value, str(tmp_path))
    assert e.value.reason == "unreadable image"


def test_truncated_image_is_unreadable():
    data = png_bytes(random_image(np.random.default_rng(), 60, 90))
    with pytest.raises(BadRecord, match="unreadable image"):
        load_image(data[: len(data) // 2])


def test_image_over_raw_pixel_limit_is_rejected_before_decoding():
    image = Image.new("RGB", (300, 300))
    with pytest.raises(BadRecord) as e:
        load_image(png_bytes(image), max_raw_pixels=299 * 299)
    assert e.value.reason == "image over limits"


def test_too_elongated_image_is_rejected():
    with pytest.raises(BadRecord, match="aspect ratio"):
        load_image(png_bytes(Image.new("RGB", (402, 2))), max_aspect_ratio=200)
