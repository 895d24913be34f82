"""Run by vLLM's own environment (tests/engines/test_fp8_vllm.py): the parameters vLLM 0.32's block-FP8
linear method (`quant_method: fp8`, Fp8LinearMethod.create_weights) creates for fused layers of given shard
shapes, by the functions it calls (fp8_utils: the block-shape validation, the e4m3 weight, the
weight_scale_inv block scales), printed as JSON. (Its CPU build cannot construct the method itself without
AMX kernels; these are the parameter-making steps of create_weights.)

    python vllm_fp8_params.py MODEL_DIR '{"qkv": [[2048, 256, 256], 2048], ...}' PORT

MODEL_DIR only gives vLLM a model config to construct parameters under (any small HF folder)."""

import json
import sys

import torch
from vllm.config import ModelConfig, VllmConfig, set_current_vllm_config
from vllm.distributed import init_distributed_environment, initialize_model_parallel
from vllm.model_executor.layers.quantization.utils.fp8_utils import (
    create_fp8_scale_parameter,
    create_fp8_weight_parameter,
    validate_fp8_block_shape,
)
from vllm.model_executor.parameter import BlockQuantScaleParameter


def describe(p: torch.Tensor) -> list:
    return [str(p.dtype).removeprefix("torch."), list(p.shape)]


def main() -> None:
    model_dir, layers = sys.argv[1], json.loads(sys.argv[2])
    with set_current_vllm_config(VllmConfig(model_config=ModelConfig(model=model_dir, dtype="bfloat16"))):
        init_distributed_environment(1, 0, "tcp://127.0.0.1:" + sys.argv[3], 0, "gloo")
        initialize_model_parallel(1, 1)
        out = {}
        for name, (rows, k) in layers.items():
            layer = torch.nn.Module()
            layer.tp_size = 1
            try:
                validate_fp8_block_shape(layer, k, sum(rows), k, rows, [128, 128])
                valid = None
            except ValueError as e:
                valid = str(e)
            out[name] = {
                "block_shape_error": valid,
                "weight": describe(create_fp8_weight_parameter(sum(rows), k, None)),
                "weight_scale_inv": describe(
                    create_fp8_scale_parameter(BlockQuantScaleParameter, rows, k, [128, 128], None)
                ),
            }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
