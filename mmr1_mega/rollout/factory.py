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
):
    """Build (and for SGLang launch) the engine of `cfg` (mmr1_mega.config.RolloutConfig) serving the HF
    directory model_path. device / dtype: for the local engine; stage / master_port: the pipeline stage a
    disaggregated SGLang client serves and its NCCL rendezvous port.

    Raises EngineError when the engine cannot start (e.g. SGLang not installed, a server not healthy
    within cfg.server_timeout_s) or for the vLLM engine, which is not implemented yet.
    """
    if cfg.engine == "local":
        from mmr1_mega.rollout.local import LocalEngine

        return LocalEngine(model_path, device=device, dtype=dtype)
    if cfg.engine == "sglang":
        import importlib.util

        if importlib.util.find_spec("sglang") is None:
            raise EngineError("rollout.engine=sglang needs SGLang: pip install 'mmr1-mega[sglang]'")
        from mmr1_mega.distributed.init import free_port
        from mmr1_mega.rollout.sglang import SGLangEngine
        from mmr1_mega.rollout.sglang_server import SGLangServer, default_log_path

        servers = []
        for i in range(cfg.num_engines):
            port = free_port()
            servers.append(
                SGLangServer(
                    str(model_path),
                    port=port,
                    tp_size=cfg.engine_tensor_parallel,
                    mem_fraction=cfg.mem_fraction,
                    base_gpu_id=i * cfg.engine_tensor_parallel,
                    colocated=cfg.colocate,
                    log_path=default_log_path(port),
                )
            )
        engine = SGLangEngine(
            servers,
            colocated=cfg.colocate,
            stage=stage,
            master_port=master_port,
            timeout_s=cfg.server_timeout_s,
        )
        return engine.launch()
    raise EngineError(f"rollout.engine={cfg.engine!r} is not implemented yet: use local or sglang")


def request_from_config(cfg, prompt_ids: list[int], seed: int | None = None, **images) -> GenerationRequest:
    """A GenerationRequest for one prompt with the sampling settings of `cfg` (RolloutConfig):
    n_samples, temperature, top_p, top_k, max_new_tokens, stop. images: pixel_values / image_grid_thw
    (local engine) and / or images (raw, SGLang)."""
    return GenerationRequest(
        prompt_ids=list(prompt_ids),
        n=cfg.n_samples,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        stop=list(cfg.stop),
        seed=seed,
        **images,
    )
