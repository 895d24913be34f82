"""Data: MMR1-RL / MMR1-SFT datasets, Qwen-VL image preprocessing, prompts, batching, the synthetic demo task,
and a small offline tokenizer / processor."""

from mmr1_mega.data.collate import collate_rl, collate_sft
from mmr1_mega.data.config import PAPER_MAX_PIXELS, PAPER_MIN_PIXELS, DataConfig
from mmr1_mega.data.errors import BadRecord, DataError
from mmr1_mega.data.images import load_image, make_image_processor, preprocess_images
from mmr1_mega.data.prompts import DEFAULT_SYSTEM_PROMPT, build_messages, encode_prompt, expand_image_tokens
from mmr1_mega.data.rl_dataset import RLDataset
from mmr1_mega.data.sft_dataset import IGNORE_INDEX, SFTDataset, encode_conversation
from mmr1_mega.data.tokenizer import build_processor, build_tokenizer, load_processor

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "IGNORE_INDEX",
    "PAPER_MAX_PIXELS",
    "PAPER_MIN_PIXELS",
    "BadRecord",
    "DataConfig",
    "DataError",
    "RLDataset",
    "SFTDataset",
    "build_messages",
    "build_processor",
    "build_tokenizer",
    "collate_rl",
    "collate_sft",
    "encode_conversation",
    "encode_prompt",
    "expand_image_tokens",
    "load_image",
    "load_processor",
    "make_image_processor",
    "preprocess_images",
]
