"""The device check: what only a GPU can show, in one run of under 8 minutes on one H200.

    python tools/gpu_check.py --out gpu_check.json             # on the GPU machine (scripts/gpu_check.sh)
    python tools/gpu_check.py --dry-run --out dry.json         # on a CPU: the same wiring at toy sizes

Each check runs in its own process (a check that initialises CUDA must not be the parent of a later
check's forked ranks), under its own time limit, and its result is written to the JSON as soon as it is
known, so a run cut short still reports what finished:
  logits      megatron Qwen2.5-VL vs transformers on the device, fp32 and bf16, at toy and at the 3B
              widths (2 layers, 4 vision blocks), right-padded and packed into one row (THD with
              transformer-engine); every parameter and buffer on the device
  grpo_demo   3 GRPO steps of the demo configuration (actor, reference and local engine on the device,
              NCCL with world size 1, the Triton op compiled): which loss implementation ran, step times
  loss_op     the fused GRPO op at 512 prompts x 8 rollouts x 4096 tokens, bf16: eager vs torch.compile
              vs Triton, forward + backward, and % of the copy bandwidth measured in the same run
  sync        the weight-sync bench (local engine)
  op_equal    the compiled Triton GRPO op vs the eager reference on the GPU, fresh random batches of 512
              sequences x 1,024 tokens: every aggregation mode, fp32 and bf16, with and without truncated
              importance sampling (loss, every metric, the gradient; the tolerances of tests/ops)
  ipc         VLLMEngine's CUDA IPC weight path (rollout.weight_transfer=ipc) into a second process on the
              GPU that maps, unpacks and hashes the buckets as vLLM's consumer does (the stand-in
              tests/rollout/vllm_ipc_standin.py: the image has no vLLM); three buckets of mixed dtypes,
              the buffer outgrown once and reused once, two update rounds, every tensor's bytes compared
  bench_step  `mmr1-mega bench step` (per-phase seconds, tokens/s, MFU against the H200's datasheet peak):
              the demo padded and packed, and the 3B example's widths with 2 decoder layers, packed
              (run it on its own: --only bench_step; the other checks together fit one 10-minute call)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("logits", "grpo_demo", "loss_op", "sync", "op_equal", "ipc", "bench_step")
LIMITS_S = {
    "logits": 120,
    "grpo_demo": 180,
    "loss_op": 120,
    "sync": 60,
    "op_equal": 120,
    "ipc": 60,
    "bench_step": 420,
}  # sum 540 s
# ||ours - transformers|| / ||transformers|| over the logits: fp32 lands far under 1e-4 (tests/tolerances.py);
# two bf16 computations in different orders, each 1e-3..1e-2 from exact (METHOD.md), within 3e-2 of each other
ALLOWED_L2 = {"fp32": 1e-4, "bf16": 3e-2}
SCHEMA = {
    "logits": {"cases"},
    "grpo_demo": {"returncode", "steps", "grpo_loss_implementation", "seconds"},
    "loss_op": {"report"},
    "sync": {"report"},
    "op_equal": {"cases"},
    "ipc": {"rounds"},
    "bench_step": {"runs"},
}


def _device():
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


# -------------------------------------------------------------------------------------------- checks
def check_logits(dry: bool) -> dict:
    import torch
    from transformers import AutoConfig

    from mmr1_mega.distributed.cpu import device
    from mmr1_mega.distributed.init import initialize_model_parallel
    from mmr1_mega.models.build import build_model, tensors_off_device
    from mmr1_mega.models.presets import qwen2_5_vl_config
    from mmr1_mega.models.qwen_vl.packing import pack, unpack_rows
    from mmr1_mega.models.registry import get_family
    from mmr1_mega.models.spec import transformer_engine_usable as use_te
    from mmr1_mega.models.tiny import megatron_inputs, save_tiny_model, tiny_vl_batch
    from mmr1_mega.models.weights import load_hf_weights

    initialize_model_parallel(1, 1)
    dev = device()
    cases = {}
    sizes = ["tiny", "tiny-qwen3"] if dry else ["tiny", "tiny-qwen3", "3b"]
    for size in sizes:
        with tempfile.TemporaryDirectory() as d:
            if size == "tiny":
                hf = save_tiny_model(d, seed=1)
            elif size == "tiny-qwen3":  # DeepStack, interleaved mrope, and a video (per-frame runs)
                hf = save_tiny_model(d, seed=1, model_type="qwen3_vl")
            else:
                cfg = qwen2_5_vl_config("3b", num_layers=2, vision_depth=4)
                torch.manual_seed(1)
                hf = get_family(cfg.model_type).hf_class()(cfg)
                hf.save_pretrained(d)
            hf_config = AutoConfig.from_pretrained(d)
            videos = ((2, 8, 8),) if size == "tiny-qwen3" else ()
            batch = tiny_vl_batch(
                hf_config, seed=2, image_grids=((1, 8, 8), (1, 8, 12), (1, 12, 8)), video_grids=videos
            )
            for dtype in ("fp32", "bf16"):
                torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
                ref_model = hf.to(dev, torch_dtype).eval()
                inputs = {k: v.to(dev) for k, v in batch.items()}
                for k in ("pixel_values", "pixel_values_videos"):
                    if k in inputs:
                        inputs[k] = inputs[k].to(torch_dtype)
                with torch.no_grad():
                    ref = ref_model(**inputs).logits.float()
                model, family = build_model(hf_config, dtype=dtype)
                load_hf_weights(model, d, family.weight_table(hf_config))
                model.eval()
                args = {k: v.to(dev) for k, v in megatron_inputs(hf_config, batch).items()}
                args["pixel_values"] = args["pixel_values"].to(torch_dtype)
                with torch.no_grad():
                    ours = model(**args).float()
                mask = inputs["attention_mask"].bool()
                diff = (ours[mask] - ref[mask]).norm() / ref[mask].norm()
                # the same samples packed into one row (the actor's train.pack_sequences): THD with
                # transformer-engine, the block-diagonal mask otherwise
                lengths = inputs["attention_mask"].sum(1).tolist()
                row = pack(
                    args["input_ids"].cpu(), args["position_ids"].cpu(), lengths, thd=use_te(), rows=None
                )
                with torch.no_grad():
                    packed = model(
                        row.input_ids.to(dev),
                        row.position_ids.to(dev),
                        None if row.attention_mask is None else row.attention_mask.to(dev),
                        args["pixel_values"],
                        args["image_grid_thw"],
                        packed_seq_params=row.packed_seq_params(),
                    ).float()
                packed_rows = torch.cat(unpack_rows(packed, row))
                packed_diff = (packed_rows - ref[mask]).norm() / ref[mask].norm()
                cases[f"{size}-{dtype}"] = {
                    "relative_l2_error": diff.item(),
                    "packed_relative_l2_error": packed_diff.item(),
                    "packing": "thd"
                    if row.cu_seqlens is not None
                    else f"block-diagonal rows {tuple(row.input_ids.shape)}",
                    "allowed": ALLOWED_L2[dtype],
                    "max_abs_error": (ours[mask] - ref[mask]).abs().max().item(),
                    "off_device": tensors_off_device(model, dev),
                    "device": str(dev),
                }
                del model
    bad = {
        k: c
        for k, c in cases.items()
        if max(c["relative_l2_error"], c["packed_relative_l2_error"]) > c["allowed"] or c["off_device"]
    }
    if bad:
        raise AssertionError(f"logits differ from transformers or tensors off the device: {bad}")
    return {"cases": cases}


def check_grpo_demo(dry: bool) -> dict:
    import yaml

    from mmr1_mega.trainer.demo import DEMO_CONFIG
    from mmr1_mega.trainer.demo import main as demo_main
    from mmr1_mega.trainer.logger import read_metrics

    out = Path(tempfile.mkdtemp(prefix="gpu-check-demo-"))
    config = DEMO_CONFIG
    if dry:  # the same configuration at toy sizes
        demo = yaml.safe_load(Path(DEMO_CONFIG).read_text())
        demo["synthetic"].update(num_train=16, num_val=4, num_sft=32)
        demo["grpo"]["sft"]["steps"] = 2
        demo["grpo"]["train"].update(
            prompts_per_step=2, micro_batch_size=4, ppo_mini_batches=1, val_max_prompts=4
        )
        demo["grpo"]["vas"].update(n_rollouts=2)
        demo["grpo"]["rollout"].update(n_samples=2, max_new_tokens=4)
        config = out / "demo_dry.yaml"
        config.write_text(yaml.safe_dump(demo))
    t0 = time.time()
    rc = demo_main(["--out", str(out), "--config", str(config), "train.steps=3", "train.val_every_steps=3"])
    records = read_metrics(out / "grpo" / "metrics.jsonl") if rc == 0 else []
    steps = [r for r in records if r.get("step", 0) >= 1 and "time/train" in r]
    ran = sorted({r.get("impl/grpo_loss") for r in steps} - {None})
    want = ["triton-interpreter"] if dry else ["triton"]  # on the GPU: the kernels compiled for real
    if rc != 0 or len(steps) != 3 or ran != want:
        raise AssertionError(
            f"demo exit code {rc}, {len(steps)} GRPO steps logged, loss ran as {ran} (want {want})"
        )
    return {
        "returncode": rc,
        "steps": [
            {k: r.get(k) for k in ("step", "perf/step_seconds", "time/rollout", "time/train", "actor/loss")}
            for r in steps
        ],
        "grpo_loss_implementation": ran,
        "implementations": {k: v for k, v in (steps[-1] if steps else {}).items() if k.startswith("impl/")},
        "seconds": round(time.time() - t0, 1),
    }


def _bench_json(main, argv: list[str]) -> dict:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(argv)
    return json.loads(buf.getvalue())


def check_loss_op(dry: bool) -> dict:
    from mmr1_mega.ops.bench import main

    if dry:
        argv = ["--device", "cpu", "--num-prompts", "2", "--max-len", "32", "--skip-compile", "--iters", "1"]
    else:
        argv = ["--device", "cuda", "--num-prompts", "512", "--rollouts", "8", "--max-len", "4096"]
    return {"report": _bench_json(main, argv)}


def check_sync(dry: bool) -> dict:
    from mmr1_mega.sync.bench import main

    argv = ["--tp", "1", "--transports", "local"]
    if dry:
        argv += ["--hidden", "32", "--layers", "1", "--heads", "2", "--vocab", "64", "--intermediate", "32"]
        argv += ["--repeats", "1"]
    return {"report": _bench_json(main, argv)}


def check_op_equal(dry: bool) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from mmr1_mega.algo import GRPOLossConfig, grpo_loss_reference
    from mmr1_mega.ops import grpo_loss, loss_implementation
    from tests.ops.ops_batches import make_batch

    dev = torch.device("cpu") if dry else torch.device("cuda", 0)
    seqs, width = (16, 32) if dry else (512, 1024)
    modes = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
    cases, bad = {}, {}
    for mode in modes:
        for dtype in (torch.float32, torch.bfloat16):
            for tis in (None, 2.0):
                seed = int(torch.randint(0, 10**6, ()))
                cfg = GRPOLossConfig(
                    loss_agg_mode=mode, kl_coef=0.02, clip_high=0.28, dual_clip_c=3.0, tis_cap=tis
                )
                logp, old, ref, mask, rewards, gids = (
                    t.to(dev)
                    for t in make_batch([8] * (seqs // 8), width, seed=seed, dtype=dtype, reward="uniform")
                )
                g = torch.Generator().manual_seed(seed + 1)
                behaviour = (old.float().cpu() + 0.7 * torch.randn(old.shape, generator=g)).to(dtype).to(dev)
                out = {}
                for name, fn in (("op", grpo_loss), ("reference", grpo_loss_reference)):
                    x = logp.clone().requires_grad_()
                    loss, metrics = fn(x, old, ref, mask, rewards, gids, cfg, behaviour_logp=behaviour)
                    (grad,) = torch.autograd.grad(loss, x)
                    out[name] = (loss.float(), metrics, grad.float())
                (l1, m1, g1), (l0, m0, g0) = out["op"], out["reference"]
                # tests/ops' tolerances: 1e-5 (fp32 blocked vs pairwise sums of O(1) terms); the bf16 gradient
                # to bf16's resolution, both relative to the largest gradient
                grad_rel = float((g1 - g0).abs().max() / g0.abs().max().clamp_min(1e-30))
                # each metric relative to its own size (seq-mean-token-sum sums whole sequences: O(width))
                metric_err = max(float((m1[k] - m0[k]).abs() / (1 + m0[k].abs())) for k in m0)
                key = f"{mode}-{str(dtype).split('.')[-1]}-tis{tis}"
                cases[key] = {
                    "loss_abs_err": float((l1 - l0).abs()),
                    "grad_max_rel_err": grad_rel,
                    "metric_max_rel_err": metric_err,
                    "implementation": loss_implementation(dev),
                }
                limit = 1.6e-2 if dtype == torch.bfloat16 else 1e-5
                if (
                    float((l1 - l0).abs()) > 1e-5 + 1e-5 * float(l0.abs())
                    or grad_rel > limit
                    or metric_err > 1e-5
                ):
                    bad[key] = cases[key]
    if bad:
        raise AssertionError(f"the op differs from the reference: {bad}")
    return {"cases": cases}


def check_ipc(dry: bool) -> dict:
    import requests
    import torch

    sys.path.insert(0, str(ROOT))
    from mmr1_mega.distributed.init import free_port
    from mmr1_mega.rollout.vllm import VLLMEngine, VLLMServer
    from tests.rollout.vllm_ipc_standin import digest

    port = free_port()
    server = VLLMServer(
        str(ROOT), port=port, external=True, device="cpu" if dry else "cuda", weight_transfer="ipc"
    )
    # the stand-in starts with the environment our launcher gives a real vLLM server (GPU, serialization)
    env = {**os.environ, **server.launch_env(), **({"CUDA_VISIBLE_DEVICES": ""} if dry else {})}
    script = ROOT / "tests" / "rollout" / "vllm_ipc_standin.py"
    standin = subprocess.Popen([sys.executable, str(script), str(port)], env=env)
    try:
        engine = VLLMEngine([server], image_token_id=0, timeout_s=60, request_timeout_s=300).launch()
        g = torch.Generator().manual_seed(0)
        dev = torch.device("cpu") if dry else torch.device("cuda", 0)

        def rand(*shape, dtype=torch.bfloat16):
            return torch.randn(*shape, generator=g).to(dtype).to(dev)

        # 3B-width shapes; the odd-length bf16 tensor before fp32 ones checks the packing order
        buckets = [
            [
                ("a.q_proj.weight", rand(2048, 2048)),
                ("a.q_proj.bias", rand(2047)),
                ("a.norm.weight", rand(2048, dtype=torch.float32)),
            ],
            [
                ("b.gate_up_proj.weight", rand(22016, 2048)),
                ("b.pos", torch.arange(13, device=dev)),
            ],  # outgrows
            [
                ("c.down_proj.weight", rand(2048, 5504)),
                ("c.norm.weight", rand(2048, dtype=torch.float32)),
            ],  # reuses
        ]
        if dry:
            buckets = []  # no CUDA: the session alone
        rounds = []
        for r in range(2):
            sent = {}
            t0 = time.perf_counter()
            engine.begin_update()
            for bucket in buckets:
                bucket = [(n, t * (r + 1)) for n, t in bucket]
                engine.update_weights(bucket)
                sent.update({n: digest(t) for n, t in bucket})
            engine.end_update()
            seconds = time.perf_counter() - t0
            got = requests.get(server.url + "/received", timeout=30).json()
            wrong = sorted(n for n in sent if got["tensors"].get(n, {}).get("sha256") != sent[n])
            nbytes = sum(t.numel() * t.element_size() for b in buckets for _, t in b)
            rounds.append(
                {
                    "updates": got["updates"],
                    "tensors": len(sent),
                    "wrong": wrong,
                    "bytes": nbytes,
                    "seconds": round(seconds, 4),
                    "gb_per_s": round(nbytes / seconds / 1e9, 2),
                }
            )
            if wrong or got["updates"] != len(buckets):
                raise AssertionError(f"round {r}: {got['updates']} updates, tensors differing: {wrong}")
        return {"rounds": rounds}
    finally:
        standin.kill()


def check_bench_step(dry: bool) -> dict:
    """`mmr1-mega bench step` on the device: the demo configuration padded and packed (token budget), and
    the 3B example's widths (2 decoder layers, 4 vision blocks) packed, bf16, with the local engine."""
    from mmr1_mega.trainer.bench import main

    demo = str(ROOT / "examples" / "demo_cpu.yaml")
    packed = ["train.pack_sequences=true", "train.max_tokens_per_micro_batch=2048"]
    steps = ["--steps", "1", "--warmup", "0"] if dry else ["--steps", "4", "--warmup", "1"]
    toy = [
        "train.prompts_per_step=2",
        "rollout.n_samples=2",
        "train.micro_batch_size=4",
        "rollout.max_new_tokens=8",
    ]
    toy = toy if dry else []
    runs = {
        "demo_padded": [demo, *steps, *toy],
        "demo_packed": [demo, *steps, *toy, *packed],
    }
    if not dry:
        runs["3b_2layers_packed"] = [
            str(ROOT / "examples" / "qwen2_5_vl_3b.yaml"), "--size", "3b", "--layers", "2", "--vision-depth", "4",
            *steps, *packed, "rollout.engine=local", "rollout.router=false", "rollout.num_engines=1",
            "train.prompts_per_step=16", "rollout.n_samples=8", "rollout.max_new_tokens=512",
            "data.max_prompt_len=1024", "vas.n_rollouts=4",
        ]  # fmt: skip
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name, argv in runs.items():  # the training run prints too: the result is read from --out
            if main([*argv, "--out", f"{d}/{name}.json"]) != 0:
                raise AssertionError(f"bench step {name} failed: {argv}")
            report = json.loads(Path(f"{d}/{name}.json").read_text())
            report.pop("per_step", None)
            out[name] = report
    return {"runs": out}


RUNNERS = {
    "logits": check_logits,
    "grpo_demo": check_grpo_demo,
    "loss_op": check_loss_op,
    "sync": check_sync,
    "op_equal": check_op_equal,
    "ipc": check_ipc,
    "bench_step": check_bench_step,
}


# ---------------------------------------------------------------------------------------------- driver
def run_one(name: str, dry: bool, result_file: str) -> None:
    """In a child process: one check, its result (or error) as JSON into result_file."""
    t0 = time.time()
    try:
        result = {"ok": True, **RUNNERS[name](dry)}
    except Exception as e:  # noqa: BLE001 - the report carries every failure
        import traceback

        result = {
            "ok": False,
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc()[-4000:],
        }
    result["seconds"] = result.get("seconds", round(time.time() - t0, 1))
    Path(result_file).write_text(json.dumps(result, indent=1, default=str))


def default_checks(dry: bool) -> tuple[str, ...]:
    """Every check in a dry run; on the device all but bench_step, which gets a call of its own (the rest
    fit one 10-minute call together)."""
    return CHECKS if dry else tuple(c for c in CHECKS if c != "bench_step")


def validate(report: dict, dry: bool, names: tuple[str, ...] | None = None) -> list[str]:
    """What is missing or failed in a report (empty when every check of `names` ran, passed and has its
    fields; default: default_checks)."""
    problems = []
    if report.get("dry_run") != dry:
        problems.append(f"dry_run is {report.get('dry_run')}, expected {dry}")
    for name in names or default_checks(dry):
        result = report.get("checks", {}).get(name)
        if result is None:
            problems.append(f"{name}: missing")
        elif not result.get("ok"):
            problems.append(f"{name}: failed: {result.get('error')}")
        elif SCHEMA[name] - set(result):
            problems.append(f"{name}: lacks {sorted(SCHEMA[name] - set(result))}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the JSON report (rewritten after each check)")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: checks the wiring")
    ap.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of {CHECKS} (default: all; on the device all but bench_step)",
    )
    ap.add_argument("--validate", action="store_true", help="only check that --out holds a complete report")
    ap.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_one:
        run_one(args.run_one, args.dry_run, args.result_file)
        return 0
    names = [n for n in args.only.split(",") if n] if args.only else list(default_checks(args.dry_run))
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        ap.error(f"unknown checks {unknown}: choose from {list(CHECKS)}")
    if args.validate:
        problems = validate(json.loads(Path(args.out).read_text()), args.dry_run, tuple(names))
        print("\n".join(problems) or f"{args.out}: a complete report, every check ok")
        return 1 if problems else 0
    report = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "checks": {}}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.dry_run:  # the CPU stand-in for the device: Triton interpreted, no compile
        env.update(TRITON_INTERPRET="1", TORCHDYNAMO_DISABLE="1")
    for name in names:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            result_file = f.name
        cmd = [sys.executable, __file__, "--out", args.out, "--run-one", name, "--result-file", result_file]
        cmd += ["--dry-run"] if args.dry_run else []
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, env=env, timeout=LIMITS_S[name], capture_output=True, text=True)
            result = (
                json.loads(Path(result_file).read_text() or "{}") if Path(result_file).stat().st_size else {}
            )
            if not result:
                result = {"ok": False, "error": f"exit code {proc.returncode}"}
            if not result.get("ok"):  # what the check printed says why (a failed rank's traceback, say)
                result.update(stdout=proc.stdout[-6000:], stderr=proc.stderr[-8000:])
        except subprocess.TimeoutExpired:
            result = {"ok": False, "error": f"timed out after {LIMITS_S[name]} s"}
        result["wall_seconds"] = round(time.time() - t0, 1)
        report["checks"][name] = result
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
        print(
            f"[gpu_check] {name}: {'ok' if result.get('ok') else 'FAILED ' + str(result.get('error'))} "
            f"({result['wall_seconds']} s)",
            flush=True,
        )
    return 0 if all(r.get("ok") for r in report["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
