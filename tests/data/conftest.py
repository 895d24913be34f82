"""Shared fixtures: one tiny offline processor per session, random tiny images."""

import io

import numpy as np
import pytest
from PIL import Image

from mmr1_mega.data import DataConfig, build_processor
from mmr1_mega.data.synthetic import synthetic_corpus

MIN_PIXELS, MAX_PIXELS = 28 * 28, 112 * 112


@pytest.fixture(scope="session")
def processor(tmp_path_factory):
    return build_processor(
        str(tmp_path_factory.mktemp("proc")), MIN_PIXELS, MAX_PIXELS, corpus=synthetic_corpus()
    )


@pytest.fixture
def cfg():
    return DataConfig(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


def random_image(rng: np.random.Generator, low: int = 20, high: int = 130) -> Image.Image:
    h, w = rng.integers(low, high, size=2)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
