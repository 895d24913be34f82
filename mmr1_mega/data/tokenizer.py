"""A small offline tokenizer and Qwen2.5-VL processor for the CPU demo (no hub access).

The tokenizer is a BPE over printable ASCII (every character encodable, nothing unknown in practice) with
merges learned from a corpus, plus Qwen2-VL's special tokens and the reasoning tags as single tokens. The
chat template produces Qwen2-VL's chat format (<|im_start|>role\\n...<|im_end|>\\n, each image as
<|vision_start|><|image_pad|><|vision_end|>).

Qwen2_5_VLProcessor's constructor and AutoProcessor both require a video processor, whose class needs
torchvision (not installable here: PyPI torchvision pins a newer, CUDA torch). load_processor therefore builds
ImageOnlyQwen2_5_VLProcessor: the same class with no video processor, so its __call__ (placeholder
expansion, mm_token_type_ids) is transformers' own code. Folders saved by build_processor name
"Qwen2_5_VLProcessor" as processor_class and hold a video processor config written as JSON (the fields of
transformers' Qwen2VLVideoProcessor), so where torchvision is installed (the rollout engines' environments)
AutoProcessor loads them as it loads a released Qwen checkpoint; load_processor uses AutoProcessor there too.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2_5_VLProcessor

from mmr1_mega.data.images import make_image_processor

QWEN_VL_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
REASONING_TAGS = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{"]
UNK = "<unk>"
# Words keep a leading space; digits stay single characters so numbers are never merged into one token.
PRETOKENIZE_PATTERN = r" ?[A-Za-z]+|\d| ?[^\sA-Za-z\d]+|\s+"

# No whitespace-control markers: the only whitespace emitted is the template's explicit newlines.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(corpus: Iterable[str] = (), vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a small BPE tokenizer offline.

    Takes: texts to learn merges from (may be empty: then characters only), the total vocabulary size
    including special tokens and tags. Returns: PreTrainedTokenizerFast with eos "<|im_end|>", pad
    "<|endoftext|>", and CHAT_TEMPLATE. Raises: ValueError if vocab_size cannot hold the base alphabet.
    """
    alphabet = sorted(set(string.printable))
    reserved = 1 + len(QWEN_VL_SPECIAL_TOKENS) + len(REASONING_TAGS)
    if vocab_size < len(alphabet) + reserved:
        raise ValueError(
            f"vocab_size={vocab_size} is below the {len(alphabet) + reserved} base tokens; raise it"
        )
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()  # pieces are substrings of the text: decoding is concatenation
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - reserved + 1,  # the trainer counts <unk>
        special_tokens=[UNK],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) or [""], trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_VL_SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TAGS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=UNK
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor without a video processor (see the module docstring for why)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # ProcessorMixin pairs positional sub-processors with this signature's names; without a
        # video_processor parameter here, the None passed for it is dropped.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def _fix_processor_class(out_dir: str) -> None:
    path = os.path.join(out_dir, "processor_config.json")
    with open(path) as f:
        config = json.load(f)
    config["processor_class"] = "Qwen2_5_VLProcessor"
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def build_processor(
    out_dir: str,
    min_pixels: int,
    max_pixels: int,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    corpus: Iterable[str] = (),
    vocab_size: int = 512,
) -> Qwen2_5_VLProcessor:
    """Build and save a small Qwen2.5-VL processor (BPE tokenizer + image processor) to `out_dir`.

    Takes: output folder, pixel bounds, vision patch sizes, a corpus for the BPE merges, vocabulary size.
    Returns: the processor, which load_processor(out_dir) restores offline.
    """
    tokenizer = build_tokenizer(corpus, vocab_size)
    image_processor = make_image_processor(
        min_pixels, max_pixels, patch_size, merge_size, temporal_patch_size
    )
    processor = ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)
    os.makedirs(out_dir, exist_ok=True)
    processor.save_pretrained(out_dir)
    _fix_processor_class(out_dir)
    write_video_processor_config(out_dir, image_processor)
    return processor


def write_video_processor_config(out_dir: str, image_processor: Any) -> None:
    """video_preprocessor_config.json for Qwen2VLVideoProcessor (transformers 5.x field names), with the image
    processor's patch sizes, normalisation and pixel bounds: what AutoProcessor (vLLM, SGLang) needs to load a
    Qwen2.5-VL processor folder. Written as JSON because the class itself needs torchvision to exist."""
    ip = image_processor
    size = getattr(ip, "size", None) or {}
    config = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "size": {"shortest_edge": size.get("shortest_edge"), "longest_edge": size.get("longest_edge")},
        "patch_size": ip.patch_size,
        "temporal_patch_size": ip.temporal_patch_size,
        "merge_size": ip.merge_size,
        "image_mean": list(ip.image_mean),
        "image_std": list(ip.image_std),
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_sample_frames": False,
        "min_frames": 4,
        "max_frames": 768,
    }
    with open(os.path.join(out_dir, "video_preprocessor_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def load_processor(
    path: str, min_pixels: int | None = None, max_pixels: int | None = None, **kwargs: Any
) -> Qwen2_5_VLProcessor:
    """Load a Qwen2-VL / Qwen2.5-VL processor from a local folder (no hub access is attempted).

    Takes: the folder (ours or a downloaded Qwen checkpoint); min_pixels / max_pixels: the resize bounds
    per image (the run's data.min_pixels / data.max_pixels) instead of the checkpoint's own, which for
    released Qwen checkpoints allow ~12.8 M pixels per image; extra kwargs for from_pretrained.
    Returns: AutoProcessor's processor where it can load (torchvision installed and the folder has a video
    processor config, as downloaded Qwen checkpoints do); otherwise an
    ImageOnlyQwen2_5_VLProcessor built from the folder's tokenizer, image processor config and chat template.
    Raises: FileNotFoundError if the folder does not exist.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"processor folder {path!r} not found; build one with build_processor(...)")
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    if is_torchvision_available() and os.path.isfile(os.path.join(path, "video_preprocessor_config.json")):
        return set_pixel_bounds(
            AutoProcessor.from_pretrained(path, local_files_only=True, **kwargs), min_pixels, max_pixels
        )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
    chat_template = getattr(tokenizer, "chat_template", None)
    template_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(template_file):
        with open(template_file) as f:
            chat_template = f.read()
    processor = ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=chat_template)
    return set_pixel_bounds(processor, min_pixels, max_pixels)


def set_pixel_bounds(processor: Any, min_pixels: int | None, max_pixels: int | None) -> Any:
    """Make the processor's image processor resize every image into [min_pixels, max_pixels] pixels (either
    bound None: keep the processor's own). Returns the processor."""
    ip = processor.image_processor
    size = ip.size
    lo = size["shortest_edge"] if min_pixels is None else min_pixels
    hi = size["longest_edge"] if max_pixels is None else max_pixels
    if not 0 < lo <= hi:
        raise ValueError(f"pixel bounds must satisfy 0 < min_pixels <= max_pixels, got {lo} and {hi}")
    ip.size = (
        type(size)(shortest_edge=lo, longest_edge=hi)
        if not isinstance(size, dict)
        else {
            "shortest_edge": lo,
            "longest_edge": hi,
        }
    )
    return processor
