"""The local (transformers) engine: greedy equals transformers' generate, seeded sampling, stops, raw
logprobs, and weight updates by HF name."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.models.tiny import tiny_vl_batch
from mmr1_mega.rollout.local import LocalEngine
from mmr1_mega.rollout.protocol import EngineError, GenerationRequest
from tests.tolerances import fp32_forward_bound


@pytest.fixture(scope="module")
def engine(tiny_dir):
    return LocalEngine(tiny_dir)


def _prompts(engine, seed):
    """Three prompts of different lengths: text only, two images, one image (processed patches)."""
    b = tiny_vl_batch(engine.config, seed=seed)
    out, patch, image = [], 0, 0
    for i in range(3):
        ids = b["input_ids"][i, : int(b["attention_mask"][i].sum())]
        n_img = int((ids == engine.config.vision_start_token_id).sum())
        grid = b["image_grid_thw"][image : image + n_img]
        n_patch = int(grid.prod(-1).sum())
        pv = b["pixel_values"][patch : patch + n_patch]
        out.append((ids.tolist(), pv if n_img else None, grid if n_img else None))
        patch, image = patch + n_patch, image + n_img
    return out


def _request(prompt, **kw):
    ids, pv, grid = prompt
    return GenerationRequest(prompt_ids=ids, pixel_values=pv, image_grid_thw=grid, **kw)


def _hf_inputs(engine, ids, pv=None, grid=None):
    x = torch.tensor([ids])
    kw = dict(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        mm_token_type_ids=(x == engine.config.image_token_id).long(),
    )
    if pv is not None:
        kw.update(pixel_values=pv, image_grid_thw=grid)
    return kw


def test_greedy_batch_equals_transformers_generate_prompt_by_prompt(engine):
    prompts = _prompts(engine, seed=int(torch.randint(0, 1000, ()).item()))
    outs = engine.generate([_request(p, temperature=0.0, max_new_tokens=8) for p in prompts])
    for p, (o,) in zip(prompts, outs):
        with torch.no_grad():
            ref = engine.model.generate(**_hf_inputs(engine, *p), max_new_tokens=8, do_sample=False)
        ref = ref[0, len(p[0]) :].tolist()
        assert o.token_ids == ref[: len(o.token_ids)]
        assert o.finish_reason == ("length" if len(o.token_ids) == 8 else "stop")


def test_logprobs_are_the_raw_model_logprobs_of_the_sampled_tokens(engine):
    prompt = _prompts(engine, seed=5)[1]
    (samples,) = engine.generate(
        [_request(prompt, n=2, temperature=0.7, top_p=0.9, max_new_tokens=6, seed=3)]
    )
    for s in samples:
        full = prompt[0] + s.token_ids
        with torch.no_grad():
            logits = engine.model(**_hf_inputs(engine, full, prompt[1], prompt[2])).logits[0]
        ref = torch.log_softmax(logits.float(), -1)[len(prompt[0]) - 1 : -1].gather(
            -1, torch.tensor(s.token_ids)[:, None]
        )
        # the engine's forward with a KV cache vs one full forward: the same fp32 model in another order
        atol = 2 * fp32_forward_bound(engine.model.config.text_config, len(full)) * logits.abs().max()
        assert torch.allclose(torch.tensor(s.logprobs), ref[:, 0], atol=float(atol))


def test_the_same_seed_gives_the_same_samples_and_another_seed_others(engine):
    prompt = _prompts(engine, seed=7)[0]
    a, b, c = (
        engine.generate([_request(prompt, n=4, temperature=1.0, max_new_tokens=8, seed=s)])[0]
        for s in (11, 11, 12)
    )
    assert [s.token_ids for s in a] == [s.token_ids for s in b]
    assert [s.token_ids for s in a] != [s.token_ids for s in c]
    assert len({tuple(s.token_ids) for s in a}) > 1  # the n samples of one request differ


def test_top_k_one_sampling_is_greedy(engine):
    prompt = _prompts(engine, seed=8)[2]
    (greedy,) = engine.generate([_request(prompt, temperature=0.0, max_new_tokens=6)])[0]
    (top1,) = engine.generate([_request(prompt, temperature=1.5, top_k=1, max_new_tokens=6, seed=1)])[0]
    assert top1.token_ids == greedy.token_ids


def test_a_stop_token_ends_the_sample_and_is_kept(engine):
    prompt = _prompts(engine, seed=9)[0]
    (free,) = engine.generate([_request(prompt, temperature=0.0, max_new_tokens=8)])[0]
    stop = free.token_ids[3]
    (stopped,) = engine.generate(
        [_request(prompt, temperature=0.0, max_new_tokens=8, stop_token_ids=[stop])]
    )[0]
    first = free.token_ids.index(stop)
    assert stopped.token_ids == free.token_ids[: first + 1] and stopped.finish_reason == "stop"


def test_a_stop_string_ends_the_sample_at_the_token_that_completes_it(engine):
    prompt = _prompts(engine, seed=10)[1]
    (free,) = engine.generate([_request(prompt, temperature=0.0, max_new_tokens=8)])[0]
    word = f"w{free.token_ids[2]}"
    (stopped,) = engine.generate([_request(prompt, temperature=0.0, max_new_tokens=8, stop=[word])])[0]
    first = [f"w{t}" for t in free.token_ids].index(word)
    assert stopped.token_ids == free.token_ids[: first + 1] and stopped.finish_reason == "stop"
    assert stopped.text.endswith(word)


def test_max_new_tokens_ends_with_length(engine):
    prompt = _prompts(engine, seed=11)[0]
    (o,) = engine.generate([_request(prompt, temperature=1.0, max_new_tokens=3, seed=2)])[0]
    assert o.finish_reason == "length" and len(o.token_ids) == len(o.logprobs) == 3


def test_messages_are_rendered_with_the_chat_template(engine):
    (a,) = engine.generate(
        [
            GenerationRequest(
                messages=[{"role": "user", "content": "w20 w30"}], temperature=0.0, max_new_tokens=4
            )
        ]
    )[0]
    ids = engine.tokenizer("w20 w30 w9", add_special_tokens=False)["input_ids"]
    (b,) = engine.generate([GenerationRequest(prompt_ids=ids, temperature=0.0, max_new_tokens=4)])[0]
    assert a.token_ids == b.token_ids


def test_update_weights_copies_by_hf_name(tiny_dir):
    eng = LocalEngine(tiny_dir)
    new = {
        n: torch.randn_like(t)
        for n, t in eng.state_dict_hf().items()
        if n.startswith(("model.layers.0.", "visual.blocks.0."))
    }
    eng.update_weights(list(new.items()))
    state = eng.state_dict_hf()
    assert all(torch.equal(state[n], t) for n, t in new.items())


def test_a_bad_bucket_is_refused_whole_and_changes_nothing(tiny_dir):
    eng = LocalEngine(tiny_dir)
    before = eng.state_dict_hf()
    good = ("model.norm.weight", torch.randn_like(before["model.norm.weight"]))
    with pytest.raises(EngineError, match="no parameter 'model.nope.weight'"):
        eng.update_weights([good, ("model.nope.weight", torch.zeros(3))])
    with pytest.raises(EngineError, match=r"shape \(3,\)"):
        eng.update_weights([good, ("lm_head.weight", torch.zeros(3))])
    assert all(torch.equal(before[n], t) for n, t in eng.state_dict_hf().items())


def test_invalid_requests_are_refused_before_generation(engine):
    with pytest.raises(ValueError, match="exactly one of prompt_ids or messages"):
        engine.generate([GenerationRequest()])
    with pytest.raises(ValueError, match="top_p"):
        engine.generate([GenerationRequest(prompt_ids=[9], top_p=0)])
