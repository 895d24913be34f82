"""One weight table serves the local and the transformer-engine layer specs: every parameter of a model
built with the local spec, renamed as megatron-core itself names it under transformer-engine, maps to the
same HF tensors with the same transform."""

from __future__ import annotations

import pytest

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.mapping import resolve
from mmr1_mega.models.registry import get_family
from mmr1_mega.models.tiny import save_tiny_model
from tests.distributed import model_workers

pytestmark = pytest.mark.distributed


def _te_name(name: str, keys_map: dict[str, str]) -> str:
    """megatron-core's local spec declares how its names map to the TE spec's (sharded_state_dict_keys_map,
    relative to a decoder layer: e.g. 'input_layernorm.' -> 'self_attention.linear_qkv.layer_norm_')."""
    head, sep, rest = name.partition("decoder.layers.")
    if not sep:
        return name
    index, _, inside = rest.partition(".")
    for local, te in keys_map.items():
        if inside.startswith(local):
            return f"{head}{sep}{index}.{te}{inside[len(local) :]}"
    return name


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen2_vl"])
def test_transformer_engine_names_map_to_the_same_hf_tensors(tmp_path, model_type):
    from megatron.core.models.gpt import gpt_layer_specs

    keys_map = gpt_layer_specs.get_gpt_layer_local_spec().submodules.sharded_state_dict_keys_map
    assert keys_map, "megatron-core no longer declares the local -> TE names"
    hf = save_tiny_model(tmp_path, seed=0, model_type=model_type)
    [names] = run_on_ranks(model_workers.parameter_names, 1, str(tmp_path))
    table = get_family(model_type).weight_table(hf.config)
    renamed = 0
    for name in names:
        te = _te_name(name, keys_map)
        local_row, te_row = resolve(table, name, 0), resolve(table, te, 0)
        assert te_row.hf_names == local_row.hf_names, (name, te)
        assert type(te_row.transform) is type(local_row.transform)
        renamed += te != name
    # two fused norms per decoder layer
    assert renamed == 2 * hf.config.text_config.num_hidden_layers


def test_the_implementations_megatron_chose_are_named():
    from megatron.core import optimizer as megatron_optimizer

    from mmr1_mega.models.spec import implementations, transformer_engine_usable

    impl = implementations()
    assert impl["layer_spec"] == ("transformer-engine" if transformer_engine_usable() else "local")
    assert impl["adam"].endswith(megatron_optimizer.Adam.__qualname__)
    if not transformer_engine_usable():  # this machine: no TE, no apex -> megatron's torch fallback
        assert impl["adam"] == "torch.optim.adamw.AdamW"
