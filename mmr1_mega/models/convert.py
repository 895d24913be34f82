"""Checkpoint converters: HF directory <-> megatron distributed checkpoint, at any TP / PP layout.

    mmr1-mega convert hf-to-mcore --hf-dir Qwen2.5-VL-7B --out ckpt/ --tp 2 --pp 2
    mmr1-mega convert mcore-to-hf --ckpt ckpt/ --out Qwen2.5-VL-7B-rl/ [--dtype bf16]
    mmr1-mega convert mcore-to-hf --ckpt ckpt/ --out Qwen2.5-VL-7B-fp8/ --dtype bf16 --quantize fp8 \
        --calib-data train.jsonl                   # FP8 for vLLM / SGLang (quant/fp8.py; modelopt's format)

Started plainly, the converter forks TP*PP local ranks (gloo on CPU); under torchrun it uses the ranks it
is given (nccl on GPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

DTYPES = ("fp32", "bf16", "fp16")


def _hf_to_mcore_rank(hf_dir: str, out: str, tp: int, pp: int, dtype: str) -> None:
    from mmr1_mega.distributed.init import initialize_model_parallel
    from mmr1_mega.models.build import build_model
    from mmr1_mega.models.checkpoint import save_model_checkpoint
    from mmr1_mega.models.hf_io import HFCheckpoint
    from mmr1_mega.models.weights import load_hf_weights

    initialize_model_parallel(tp, pp)
    ckpt = HFCheckpoint(hf_dir)
    hf_config = ckpt.config()
    model, family = build_model(hf_config, dtype=dtype)
    load_hf_weights(model, ckpt, family.weight_table(hf_config))
    save_model_checkpoint(model, out, hf_dir)


def _mcore_to_hf_rank(
    ckpt_dir: str, out: str, tp: int, pp: int, dtype: str | None, max_shard_mb: float
) -> None:
    from transformers import AutoConfig

    from mmr1_mega.distributed.init import initialize_model_parallel
    from mmr1_mega.models.build import build_model
    from mmr1_mega.models.checkpoint import check_model_checkpoint, load_model_checkpoint
    from mmr1_mega.models.qwen_vl.bridge import DTYPES as TORCH_DTYPES
    from mmr1_mega.models.weights import export_hf

    assets = check_model_checkpoint(ckpt_dir)
    initialize_model_parallel(tp, pp)
    hf_config = AutoConfig.from_pretrained(assets)
    model, family = build_model(hf_config)
    load_model_checkpoint(model, ckpt_dir)
    export_hf(
        model,
        family.weight_table(hf_config),
        out,
        assets,
        dtype=TORCH_DTYPES[dtype] if dtype else None,
        max_shard_mb=max_shard_mb,
    )
    if dtype:
        _set_config_dtype(out, dtype)


def _set_config_dtype(out: str, dtype: str) -> None:
    import torch.distributed as dist

    if dist.get_rank() != 0:
        return
    path = Path(out) / "config.json"
    cfg = json.loads(path.read_text())
    cfg["dtype"] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
    path.write_text(json.dumps(cfg, indent=2))


def _check_hf_dir(hf_dir: str, tp: int, pp: int) -> None:
    """Fail before launching ranks: missing directory, unknown model type, layout that does not fit."""
    from mmr1_mega.models.hf_io import HFCheckpoint
    from mmr1_mega.models.qwen_vl.bridge import check_layout
    from mmr1_mega.models.registry import get_family

    cfg = HFCheckpoint(hf_dir).config()
    get_family(cfg.model_type)
    check_layout(cfg, tp, pp, False)


def _parent(out: str) -> str:
    parent = Path(out).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return str(parent)


def _check_quantize(args, assets: str) -> None:
    """Fail before any rank starts: modelopt missing, no calibration data, shapes block FP8 cannot hold."""
    import os

    from transformers import AutoConfig

    from mmr1_mega.quant import fp8

    fp8.modelopt_fp8()
    if args.fp8_format == "modelopt":
        if not args.calib_data:
            raise ValueError(
                "--fp8-format modelopt needs --calib-data (RL data files): its static activation scales are "
                "calibrated on their prompts; or use --fp8-format block (dynamic activations)"
            )
        missing = [f for f in args.calib_data if not f.startswith("hf:") and not os.path.exists(f)]
        if missing:
            raise ValueError(f"--calib-data files do not exist: {missing}")
        if args.calib_prompts < 1:
            raise ValueError("--calib-prompts must be >= 1")
    else:
        fp8.check_block_shapes(fp8.decoder_linear_shapes(AutoConfig.from_pretrained(assets)))


def _quantize(hf_dir: str, args) -> None:
    """The exported HF directory -> the FP8 checkpoint at args.out (calibrated on --calib-data)."""
    from mmr1_mega.quant import fp8

    dataset = None
    if args.fp8_format == "modelopt":
        from mmr1_mega.data.config import DataConfig
        from mmr1_mega.data.rl_dataset import RLDataset
        from mmr1_mega.data.tokenizer import load_processor

        data = DataConfig()
        processor = load_processor(hf_dir, data.min_pixels, data.max_pixels)
        dataset = RLDataset(args.calib_data, data, processor, name="fp8 calibration")
    fp8.prepare_engine_checkpoint(hf_dir, args.out, args.fp8_format, dataset, args.calib_prompts)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `mmr1-mega convert`; returns a process exit code."""
    parser = argparse.ArgumentParser(prog="mmr1-mega convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF directory -> megatron distributed checkpoint")
    a.add_argument("--hf-dir", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--tp", type=int, default=1)
    a.add_argument("--pp", type=int, default=1)
    a.add_argument("--dtype", choices=DTYPES, default="fp32", help="parameter dtype of the saved checkpoint")
    b = sub.add_parser("mcore-to-hf", help="megatron distributed checkpoint (any layout) -> HF directory")
    b.add_argument("--ckpt", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--tp", type=int, default=1, help="layout used for the conversion (any works)")
    b.add_argument("--pp", type=int, default=1)
    b.add_argument("--dtype", choices=DTYPES, default=None, help="cast the exported weights")
    b.add_argument("--max-shard-mb", type=float, default=4096)
    b.add_argument(
        "--quantize",
        choices=("fp8",),
        default=None,
        help="write FP8 (e4m3) decoder linears with nvidia-modelopt for vLLM / SGLang (the rest in --dtype)",
    )
    b.add_argument(
        "--fp8-format",
        choices=("modelopt", "block"),
        default="modelopt",
        help="modelopt: its HF export format (per-tensor scales, static activation scales calibrated on "
        "--calib-data); block: 128x128 scales, dynamic activations (DeepSeek-style `fp8`)",
    )
    b.add_argument(
        "--calib-data", nargs="+", default=[], help="RL data files whose prompts calibrate (modelopt)"
    )
    b.add_argument("--calib-prompts", type=int, default=64)
    args = parser.parse_args(argv)

    from mmr1_mega.distributed.cpu import disable_dynamo_without_cuda
    from mmr1_mega.distributed.launch import RankFailed, run_on_ranks
    from mmr1_mega.models.hf_io import CheckpointError

    disable_dynamo_without_cuda()
    start = time.time()
    try:
        if args.direction == "hf-to-mcore":
            _check_hf_dir(args.hf_dir, args.tp, args.pp)
            run_on_ranks(
                _hf_to_mcore_rank, args.tp * args.pp, args.hf_dir, args.out, args.tp, args.pp, args.dtype
            )
        else:
            from mmr1_mega.models.checkpoint import check_model_checkpoint

            assets = check_model_checkpoint(args.ckpt)
            if args.quantize:
                _check_quantize(args, assets)
            export_dir = (
                args.out
                if not args.quantize
                else tempfile.mkdtemp(prefix=".hf-export-", dir=_parent(args.out))
            )
            try:
                run_on_ranks(
                    _mcore_to_hf_rank,
                    args.tp * args.pp,
                    args.ckpt,
                    export_dir,
                    args.tp,
                    args.pp,
                    args.dtype,
                    args.max_shard_mb,
                )
                if args.quantize:
                    _quantize(export_dir, args)
            finally:
                if args.quantize:
                    shutil.rmtree(export_dir, ignore_errors=True)
    except (CheckpointError, ValueError) as e:
        print(f"mmr1-mega convert: error: {e}", file=sys.stderr)
        return 2
    except RankFailed as e:
        last = str(e).strip().splitlines()[-1]
        print(f"mmr1-mega convert: error: {last}\n(full traceback above)", file=sys.stderr)
        print(str(e), file=sys.stderr)
        return 1
    print(
        json.dumps({"direction": args.direction, "out": args.out, "seconds": round(time.time() - start, 2)})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
