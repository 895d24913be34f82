"""Image loading and Qwen-VL preprocessing within min / max pixels.

transformers 5.x has two Qwen2-VL image processors: the default one needs torchvision (not installable next
to our CPU torch: PyPI torchvision pins a newer, CUDA torch), the PIL one (Qwen2VLImageProcessorPil) does not.
Both resize with smart_resize and patchify identically, so we use the PIL one.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mmr1_mega.data.errors import BadRecord

UNREADABLE_IMAGE = "unreadable image"
IMAGE_OVER_LIMITS = "image over limits"


def make_image_processor(
    min_pixels: int,
    max_pixels: int,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> Qwen2VLImageProcessorPil:
    """A Qwen2-VL / Qwen2.5-VL image processor resizing each image into [min_pixels, max_pixels] pixels.

    Takes: pixel bounds (area after resize) and the vision tower's patch / merge / temporal patch sizes.
    Returns: Qwen2VLImageProcessorPil (CLIP mean / std, bicubic, as Qwen's own config).
    """
    return Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
    )


def _image_bytes(obj: Any, base_dir: str | None) -> bytes | str:
    """Bytes of an encoded image, or a resolved file path, from any of the accepted image forms."""
    if isinstance(obj, dict):
        data = obj.get("bytes")
        if isinstance(data, str):  # JSON cannot hold raw bytes: {"bytes": "<base64>"}
            try:
                return base64.b64decode(data, validate=True)
            except ValueError:
                raise BadRecord(UNREADABLE_IMAGE, "image 'bytes' string is not base64") from None
        if data is not None:
            return _image_bytes(data, base_dir)
        if obj.get("path"):
            return _image_bytes(str(obj["path"]), base_dir)
        raise BadRecord(UNREADABLE_IMAGE, "image dict has neither 'bytes' nor 'path'")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, str):
        if obj.startswith("data:image"):
            try:
                return base64.b64decode(obj.split(",", 1)[-1], validate=True)
            except ValueError:
                raise BadRecord(UNREADABLE_IMAGE, "data URI is not base64") from None
        return obj if os.path.isabs(obj) or base_dir is None else os.path.join(base_dir, obj)
    raise BadRecord(UNREADABLE_IMAGE, f"unsupported image value of type {type(obj).__name__}")


def load_image(
    obj: Any, base_dir: str | None = None, max_raw_pixels: int = 8192 * 8192, max_aspect_ratio: float = 200.0
) -> Image.Image:
    """Decode one image into RGB, checking its size before decoding the pixels.

    Takes: a PIL image, encoded bytes, a file path (relative ones resolved against base_dir), a "data:image/..."
    URI, or a {"bytes": ..., "path": ...} dict as `datasets` stores images.
    Returns: a fully loaded RGB PIL image.
    Raises: BadRecord("unreadable image") if it cannot be opened or decoded, BadRecord("image over limits")
    if width*height > max_raw_pixels or the aspect ratio exceeds max_aspect_ratio.
    """
    if isinstance(obj, Image.Image):
        image = obj
    else:
        source = _image_bytes(obj, base_dir)
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            name = "<bytes>" if isinstance(source, bytes) else source
            raise BadRecord(UNREADABLE_IMAGE, f"{name}: {type(e).__name__}: {e}") from None
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > max_raw_pixels:
        raise BadRecord(IMAGE_OVER_LIMITS, f"{width}x{height} exceeds max_raw_pixels={max_raw_pixels}")
    if max(width, height) / min(width, height) > max_aspect_ratio:
        raise BadRecord(IMAGE_OVER_LIMITS, f"{width}x{height} aspect ratio exceeds {max_aspect_ratio}")
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise BadRecord(UNREADABLE_IMAGE, f"decoding failed: {type(e).__name__}: {e}") from None


def check_resized_size(
    height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 28
) -> tuple[int, int]:
    """The size Qwen-VL resizes an image to, checked against max_pixels.

    smart_resize keeps each side >= factor, so a very elongated image can resize to more than max_pixels.
    When it shrinks an image it floors both sides, so with close limits the area can fall below min_pixels;
    that is the processor's own behaviour and the image stays usable, so it is not rejected.
    Takes: image height / width, pixel bounds, factor = patch_size * merge_size. Returns: (height, width)
    after resizing. Raises: BadRecord("image over limits") when that area exceeds max_pixels or smart_resize
    refuses the aspect ratio.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    try:
        h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    except ValueError as e:
        raise BadRecord(IMAGE_OVER_LIMITS, str(e)) from None
    if h * w > max_pixels:
        raise BadRecord(
            IMAGE_OVER_LIMITS,
            f"{width}x{height} resizes to {w}x{h} > max_pixels={max_pixels} (too elongated)",
        )
    return h, w


def grid_thw_for_size(
    height: int, width: int, image_processor: Qwen2VLImageProcessorPil
) -> tuple[int, int, int]:
    """(grid_t, grid_h, grid_w) that the processor will give an image of this size, without its pixels."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    factor = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size
    h, w = smart_resize(height, width, factor, size["shortest_edge"], size["longest_edge"])
    return 1, h // image_processor.patch_size, w // image_processor.patch_size


def preprocess_images(
    images: list[Image.Image], image_processor: Qwen2VLImageProcessorPil
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize and patchify images as Qwen-VL's vision tower expects.

    Takes: RGB PIL images, the image processor. Returns: pixel_values [sum_i t*h*w, C*T*P*P] float32 and
    image_grid_thw [num_images, 3] int64 (empty tensors when there are no images).
    """
    if not images:
        dim = 3 * image_processor.temporal_patch_size * image_processor.patch_size**2
        return torch.zeros(0, dim), torch.zeros(0, 3, dtype=torch.long)
    out = image_processor(images=images, return_tensors="pt")
    return out["pixel_values"].float(), out["image_grid_thw"].long()


def num_image_tokens(grid_thw: Any, merge_size: int) -> int:
    """Placeholder tokens of one image: t*h*w / merge_size**2 (Qwen2-VL merges merge_size^2 patches)."""
    return int(np.prod([int(x) for x in grid_thw])) // (merge_size**2)
