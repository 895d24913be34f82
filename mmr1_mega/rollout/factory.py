"""make_engine: the rollout engine a RolloutConfig asks for."""

from __future__ import annotations

import os

from mmr1_mega.rollout.protocol import EngineError, GenerationRequest


def make_engine(
    cfg,
    model_path: str | os.PathLike,
    device: str = "cpu",
    dtype: str = "fp32",
    stage: int = 0,
    master_port: int | None = None,
    host: str = "127.0.0.1",
    router: bool | None = None,
):
    """Build (and for SGLang launch) the engine of `cfg` (mmr1_mega.config.RolloutConfig) serving the HF
    directory model_path. device / dtype: for the local engine; stage / master_port: the pipeline stage a
    disaggregated SGLang client serves and its NCCL rendezvous port.

    host: the address the servers (cfg.num_engines of them, on this node) listen on (this node's reachable
    address when other nodes must reach them). device: "cpu" runs the engines' CPU builds. router: start
    sglang-router in front of the SGLang servers (default cfg.router; False for servers that only receive
    weights, their generation going through another process's client).
    Raises EngineError when the engine cannot start (e.g. the engine not installed and no server_launcher, a model vLLM cannot serve on this device, a server not healthy within
    cfg.server_timeout_s).
    """
    fp8 = cfg.fp8_format if cfg.weight_dtype == "fp8" else None
    if cfg.engine == "local":
        from mmr1_mega.rollout.local import LocalEngine

        return LocalEngine(model_path, device=device, dtype=dtype, fp8=fp8)
    check_fp8_servable(cfg.engine, fp8, device)
    if cfg.engine not in ("sglang", "vllm"):
        raise EngineError(f"rollout.engine={cfg.engine!r}: use local, sglang or vllm")
    import importlib.util

    module = "sglang" if cfg.engine == "sglang" else "vllm"
    if not cfg.server_launcher and importlib.util.find_spec(module) is None:
        raise EngineError(
            f"rollout.engine={cfg.engine} needs {module} here (pip install 'mmr1-mega[{cfg.engine}]'), or "
            f"rollout.server_launcher naming the python of an environment that has it "
            f"(e.g. [.venv-{cfg.engine}/bin/python, -m, "
            + ("sglang.launch_server" if cfg.engine == "sglang" else "vllm.entrypoints.openai.api_server")
            + f"] after `bash scripts/engine_env.sh {cfg.engine}`)"
        )
    from mmr1_mega.distributed.init import free_port
    from mmr1_mega.rollout.server import default_log_path

    tp = cfg.engine_tensor_parallel
    if not cfg.colocate:
        check_engine_gpus(cfg.engine_gpus, actor_gpus_on_this_node())
    common = dict(
        host=host,
        tp_size=tp,
        mem_fraction=cfg.mem_fraction,
        dtype=ENGINE_DTYPES.get(dtype, dtype),
        colocated=cfg.colocate,
        device="cpu" if device == "cpu" else "cuda",
        extra_args=[str(a) for a in cfg.server_args],  # YAML may have parsed a flag's value as a number
        env={str(k): str(v) for k, v in cfg.server_env.items()},
        **({"launcher": list(cfg.server_launcher)} if cfg.server_launcher else {}),
    )
    # colocated: on the actor's own GPUs; disaggregated: on the GPUs the config names
    gpus = [i * tp if cfg.colocate else cfg.engine_gpus[i * tp] for i in range(cfg.num_engines)]
    if cfg.engine == "vllm":
        from mmr1_mega.rollout.vllm import (
            VLLMEngine,
            VLLMServer,
            check_servable,
            resolve_weight_transfer,
            untied_copy,
        )

        check_servable(model_path, device)
        # vLLM's CPU build leaves a tied lm_head stale after weight updates: serve an untied copy there
        untied = untied_copy(model_path) if common["device"] == "cpu" else None
        model_path = untied or model_path
        transfer = resolve_weight_transfer(cfg.weight_transfer, common["device"], cfg.colocate)
        servers = []
        for gpu in gpus:
            port = free_port()
            servers.append(
                VLLMServer(
                    str(model_path),
                    port=port,
                    base_gpu_id=gpu,
                    log_path=default_log_path(port, "vllm"),
                    weight_transfer=transfer,
                    **common,
                )
            )
        return VLLMEngine(
            servers,
            colocated=cfg.colocate,
            weight_dir=cfg.weight_dir or None,
            timeout_s=cfg.server_timeout_s,
            request_timeout_s=cfg.request_timeout_s,
            max_inflight=cfg.max_inflight_per_engine,
            lm_head_from_embeddings=untied is not None,
            owned_dirs=[untied] if untied is not None else [],
        ).launch()
    from mmr1_mega.rollout.sglang import SGLangEngine
    from mmr1_mega.rollout.sglang_server import SGLangServer

    servers = []
    for gpu in gpus:
        port = free_port()
        servers.append(
            SGLangServer(
                str(model_path),
                port=port,
                base_gpu_id=gpu,
                deterministic=cfg.deterministic,
                log_path=default_log_path(port, "sglang"),
                **common,
            )
        )
    engine = SGLangEngine(
        servers,
        colocated=cfg.colocate,
        stage=stage,
        # the weight-update group (disaggregated) rendezvous at this process, on its node, which runs
        # the servers it starts: they reach it on the loopback interface
        master_address="127.0.0.1",
        master_port=master_port if master_port is not None else (None if cfg.colocate else free_port()),
        timeout_s=cfg.server_timeout_s,
        request_timeout_s=cfg.request_timeout_s,
        max_inflight=cfg.max_inflight_per_engine,
        router=make_router(cfg) if (cfg.router if router is None else router) else None,
    )
    return engine.launch()


def check_fp8_servable(engine: str, fp8: str | None, device: str) -> None:
    """Raise EngineError before launch for FP8 weights an engine cannot serve on this device (probed with
    vLLM 0.32 and SGLang 0.5.23 CPU builds: docs/design/fp8_rollout.md)."""
    if fp8 is None or device != "cpu" or cpu_has_amx():
        return
    if engine == "sglang":
        raise EngineError(
            "SGLang's CPU build runs no FP8 layer (its FP8 kernels need AMX): serve bf16 on CPU, FP8 on GPUs"
        )
    if fp8 == "block":
        raise EngineError(
            "vLLM's CPU build has no block FP8 kernels (they need AMX): use rollout.fp8_format=modelopt on CPU"
        )


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (the engines' CPU FP8 kernels need them), by /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_tile" in line.split() for line in f)
    except OSError:
        return False


def make_router(cfg):
    """The sglang-router process of cfg (not started: the SGLang engine starts it after its servers), on
    this host, at a free port."""
    import importlib.util

    from mmr1_mega.distributed.init import free_port
    from mmr1_mega.rollout.server import default_log_path
    from mmr1_mega.rollout.sglang_server import SGLangRouter

    if not cfg.router_launcher and importlib.util.find_spec("sglang_router") is None:
        raise EngineError(
            "rollout.router=true needs sglang-router here (pip install sglang-router==0.3.2), or "
            "rollout.router_launcher naming the python of an environment that has it (e.g. "
            "[.venv-sglang/bin/python, -m, sglang_router.launch_router] after `bash scripts/engine_env.sh sglang`)"
        )
    port = free_port()
    return SGLangRouter(
        "",
        port=port,
        policy=cfg.router_policy,
        request_timeout_s=cfg.request_timeout_s,
        extra_args=[str(a) for a in cfg.router_args],
        log_path=default_log_path(port, "sglang-router"),
        **({"launcher": list(cfg.router_launcher)} if cfg.router_launcher else {}),
    )


def make_client(cfg, addresses: list[dict], dtype: str = "fp32"):
    """A client (rollouts only: no launch, no weight update) of servers other processes started and feed,
    e.g. every node's engines gathered to rank 0. addresses: ServerEngine.addresses() of each owner."""
    if cfg.engine not in ("sglang", "vllm"):
        raise EngineError(f"rollout.engine={cfg.engine!r} has no servers to reach")
    if cfg.engine == "vllm":
        from mmr1_mega.rollout.vllm import VLLMEngine as Engine
        from mmr1_mega.rollout.vllm import VLLMServer as Server
    else:
        from mmr1_mega.rollout.sglang import SGLangEngine as Engine
        from mmr1_mega.rollout.sglang_server import SGLangServer as Server
    servers = [
        Server(
            a["model_path"],
            port=a["port"],
            host=a["host"],
            tp_size=a["tp_size"],
            device=a["device"],
            dtype=ENGINE_DTYPES.get(dtype, dtype),
            external=True,
        )
        for a in addresses
    ]
    kw = {
        "colocated": cfg.colocate,
        "timeout_s": cfg.server_timeout_s,
        "request_timeout_s": cfg.request_timeout_s,
        "max_inflight": cfg.max_inflight_per_engine,
    }
    if cfg.engine == "sglang" and cfg.router:
        kw["router"] = make_router(cfg)
    # external servers: launch only waits until each is healthy (and starts the router, if any)
    return Engine(servers, **kw).launch()  # external servers: launch only waits until each is healthy


# the model's dtype names (config model.dtype) as the engines' --dtype flags spell them
ENGINE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def actor_gpus_on_this_node() -> list[int]:
    """The GPU ids the actor's ranks use on this node: local ranks 0 .. LOCAL_WORLD_SIZE-1 (torchrun)."""
    return list(range(int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))))


def check_engine_gpus(engine_gpus: list[int], actor_gpus: list[int]) -> None:
    """Raise EngineError when disaggregated engines would share a GPU with the actor."""
    shared = sorted(set(engine_gpus) & set(actor_gpus))
    if shared:
        raise EngineError(
            f"rollout.engine_gpus {engine_gpus} overlap the actor's GPUs {actor_gpus} on this node "
            f"(GPUs {shared}): with colocate=false give the engines GPUs of their own, e.g. launch "
            "fewer ranks per node (torchrun --nproc-per-node) and name the rest"
        )


def request_from_config(cfg, prompt_ids: list[int], seed: int | None = None, **images) -> GenerationRequest:
    """A GenerationRequest for one prompt with the sampling settings of `cfg` (RolloutConfig):
    n_samples, temperature, top_p, top_k, max_new_tokens, stop, stop_token_ids. images: pixel_values / image_grid_thw
    (local engine) and / or images (raw, SGLang)."""
    return GenerationRequest(
        prompt_ids=list(prompt_ids),
        n=cfg.n_samples,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        stop=list(cfg.stop),
        stop_token_ids=list(cfg.stop_token_ids),
        seed=seed,
        **images,
    )
