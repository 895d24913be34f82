"""Rollout throughput: the same model and prompts through each engine (local transformers, vLLM, SGLang) in one
run; generated tokens per second. Prints JSON.

The model is a random Qwen2.5-VL-architecture model of the demo's kind (the demo's processor, the sizes given
here) written to a temporary folder; the prompts are the demo's counting questions, each with an image, every
engine getting the same prompt ids and images, sampled n times at temperature 1. "vllm-fp8" / "sglang-fp8":
the same server with FP8 weights (quant/fp8.py, --fp8-format: block by default on GPUs, modelopt on CPU,
calibrated on the benchmark's own prompts), computing in bf16. The vLLM and SGLang servers
start from the environments scripts/engine_env.sh builds (--vllm-python / --sglang-python); on CPU, SGLang
needs the sgl_kernel stand-in of tests/engines/standin on its PYTHONPATH (--sglang-env). An engine that cannot
run here is reported as skipped, with the reason. Each engine serves one warm-up request before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ("local", "vllm", "sglang", "vllm-fp8", "sglang-fp8")
LAUNCH = {"vllm": "vllm.entrypoints.openai.api_server", "sglang": "sglang.launch_server"}


def build_model(out: Path, hidden: int, layers: int, heads: int, seed: int = 0) -> None:
    """The demo's processor and a random tiny Qwen2.5-VL of the given sizes (head_dim = hidden / heads)."""
    from mmr1_mega.data.prompts import DEFAULT_SYSTEM_PROMPT
    from mmr1_mega.data.synthetic import synthetic_corpus
    from mmr1_mega.data.tokenizer import build_processor
    from mmr1_mega.trainer.demo import save_tiny_vl_model

    processor = build_processor(
        str(out), 3136, 12544, corpus=synthetic_corpus() + [DEFAULT_SYSTEM_PROMPT], vocab_size=320
    )
    sizes = dict(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 2),
        intermediate_size=2 * hidden,
        tie_word_embeddings=False,
        vision_depth=2,
        vision_hidden=64,
    )
    save_tiny_vl_model(out, processor.tokenizer, sizes, seed)


def make_requests(model_dir: Path, prompts: int, n: int, max_new_tokens: int, seed: int = 0) -> list:
    """`prompts` counting questions with one random image each, as the trainer tokenizes them."""
    import torch
    from PIL import Image

    from mmr1_mega.data.tokenizer import load_processor
    from mmr1_mega.rollout.protocol import GenerationRequest

    processor = load_processor(str(model_dir))
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(prompts):
        side = int(torch.randint(56, 113, (), generator=g))
        image = Image.fromarray((torch.rand(side, side, 3, generator=g) * 255).to(torch.uint8).numpy())
        content = [{"type": "image"}, {"type": "text", "text": f"How many red shapes are there? ({k})"}]
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        enc = processor(text=[text], images=[image], return_tensors="pt")
        out.append(
            GenerationRequest(
                prompt_ids=enc["input_ids"][0].tolist(),
                images=[image],
                pixel_values=enc["pixel_values"],
                image_grid_thw=enc["image_grid_thw"],
                n=n,
                temperature=1.0,
                max_new_tokens=max_new_tokens,
                seed=seed + k,
            )
        )
    return out


def fp8_model(model_dir: Path, requests: list, fmt: str, device: str) -> Path:
    """An FP8 copy of the benchmark model, modelopt's activation scales calibrated on the requests' prompts."""
    import torch

    from mmr1_mega.quant import fp8

    def loop(model) -> None:
        for r in requests:
            ids = torch.tensor([r.prompt_ids], device=model.device)
            model(
                input_ids=ids,
                mm_token_type_ids=(ids == model.config.image_token_id).long(),
                pixel_values=r.pixel_values.to(model.device, model.dtype),
                image_grid_thw=r.image_grid_thw.to(model.device),
            )

    out = model_dir.with_name(model_dir.name + f"-fp8-{fmt}")
    if not out.exists():
        fp8.prepare_engine_checkpoint(model_dir, out, fmt, device=device, forward_loop=loop)
    return out


def _engine(kind: str, model_dir: Path, args, log_dir: Path, dtype: str):
    if kind == "local":
        from mmr1_mega.rollout.local import LocalEngine

        return LocalEngine(model_dir, device="cpu" if args.device == "cpu" else "cuda", dtype=dtype)
    from mmr1_mega.distributed.init import free_port
    from mmr1_mega.rollout.factory import ENGINE_DTYPES

    python = getattr(args, f"{kind}_python") or sys.executable
    if not os.access(python, os.X_OK):
        raise RuntimeError(f"no python at {python}: build it with `bash scripts/engine_env.sh {kind}`")
    port = free_port()
    env = dict(e.split("=", 1) for e in getattr(args, f"{kind}_env"))
    common = dict(
        port=port,
        dtype=ENGINE_DTYPES[dtype],
        device=args.device,
        colocated=False,
        seed=0,
        launcher=[python, "-m", LAUNCH[kind]],
        env=env,
        log_path=str(log_dir / f"{kind}-{port}.log"),
    )
    if kind == "vllm":
        from mmr1_mega.rollout.vllm import VLLMEngine, VLLMServer, check_servable

        check_servable(model_dir, args.device)
        server = VLLMServer(str(model_dir), max_model_len=2048, **common)
        return VLLMEngine([server], colocated=False, timeout_s=600).launch()
    from mmr1_mega.rollout.sglang import SGLangEngine
    from mmr1_mega.rollout.sglang_server import SGLangServer

    server = SGLangServer(
        str(model_dir), mem_fraction=0.3, extra_args=["--max-total-tokens", "16384"], **common
    )
    return SGLangEngine([server], colocated=True, timeout_s=600).launch()


def run_engine(kind: str, model_dir: Path, requests: list, args, log_dir: Path) -> dict:
    """Start the engine, one warm-up request, then all requests timed; its figures (or why it was skipped)."""
    t0 = time.perf_counter()
    try:
        dtype = args.dtype
        if kind.endswith("-fp8"):
            from mmr1_mega.quant.fp8 import engine_dtype
            from mmr1_mega.rollout.factory import check_fp8_servable

            check_fp8_servable(kind.removesuffix("-fp8"), args.fp8_format, args.device)
            model_dir = fp8_model(model_dir, requests, args.fp8_format, args.device)
            dtype = engine_dtype(args.dtype, "fp8")  # FP8 engines compute in bf16
        engine = _engine(kind.removesuffix("-fp8"), model_dir, args, log_dir, dtype)
    except Exception as e:  # noqa: BLE001 - reported, the other engines still run
        return {"skipped": f"{type(e).__name__}: {e}"}
    try:
        start_s = time.perf_counter() - t0
        engine.generate(requests[:1])
        t1 = time.perf_counter()
        outs = engine.generate(requests)
        seconds = time.perf_counter() - t1
    except Exception as e:  # noqa: BLE001 - reported with the server's last words, the other engines still run
        logs = [
            s.log_path for s in getattr(engine, "servers", []) if s.log_path and os.path.exists(s.log_path)
        ]
        tail = Path(logs[0]).read_text(errors="replace").splitlines()[-15:] if logs else []
        return {"failed": f"{type(e).__name__}: {e}", "server_log_tail": tail}
    finally:
        engine.shutdown()
    lengths = [len(s.token_ids) for per in outs for s in per]
    return {
        "start_seconds": round(start_s, 2),
        "seconds": round(seconds, 3),
        "samples": len(lengths),
        "generated_tokens": sum(lengths),
        "mean_length": round(sum(lengths) / len(lengths), 2),
        "tokens_per_second": round(sum(lengths) / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmr1-mega bench rollout", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, of " + ", ".join(ENGINES))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument(
        "--heads", type=int, default=8, help="head_dim = hidden / heads (vLLM on CPU: 32, 64, ...)"
    )
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--fp8-format",
        choices=("block", "modelopt"),
        default=None,
        help="the *-fp8 engines' FP8 format (default: block on GPUs, modelopt on CPU)",
    )
    for kind in ("vllm", "sglang"):
        default = Path(".venv-" + kind) / "bin" / "python"
        p.add_argument(f"--{kind}-python", default=str(default) if default.exists() else None)
        p.add_argument(f"--{kind}-env", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.fp8_format = args.fp8_format or ("modelopt" if args.device == "cpu" else "block")
    kinds = [k.strip() for k in args.engines.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(ENGINES))
    if unknown:
        p.error(f"unknown engines {unknown}; choose from {list(ENGINES)}")
    work = Path(tempfile.mkdtemp(prefix="mmr1-bench-rollout-"))
    try:
        model_dir = work / "model"
        build_model(model_dir, args.hidden, args.layers, args.heads)
        requests = make_requests(model_dir, args.prompts, args.n, args.max_new_tokens)
        results = {
            "model": {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "dtype": args.dtype},
            "fp8_format": args.fp8_format if any(k.endswith("-fp8") for k in kinds) else None,
            "prompts": args.prompts,
            "n": args.n,
            "max_new_tokens": args.max_new_tokens,
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "engines": {},
        }
        for kind in kinds:
            print(f"[bench rollout] {kind} ...", file=sys.stderr, flush=True)
            results["engines"][kind] = run_engine(kind, model_dir, requests, args, work)
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
