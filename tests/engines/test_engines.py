"""The real vLLM and SGLang servers through our Engine adapters, against transformers on the same weights
(fp32): text and image prompts, n samples, seeds, raw logprobs, greedy continuations, stop strings, bad
requests, and weight updates (twice, with the caches reset in between)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmr1_mega.rollout.protocol import EngineError, GenerationRequest
from tests.tolerances import fp32_forward_bound

pytestmark = pytest.mark.engine


def _hf(model_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()


def _save_weights(state: dict, model_dir, out_dir):
    """out_dir: model_dir's config with the weights `state` (HF on-disk names), for transformers to load."""
    import shutil

    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "generation_config.json"):
        shutil.copy(model_dir / f, out_dir / f)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def _processor(model_dir):
    from mmr1_mega.data.tokenizer import load_processor

    return load_processor(str(model_dir))


def _image(seed: int, size=(84, 112)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def _prompt(processor, text: str, image: Image.Image | None = None) -> dict:
    """Prompt ids as the trainer makes them (chat template, placeholders expanded), with the image both raw
    (for the engines) and processed (for transformers)."""
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": text}]
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    enc = processor(text=[rendered], images=[image] if image is not None else None, return_tensors="pt")
    out = {"ids": enc["input_ids"][0].tolist(), "images": [image] if image is not None else None}
    if image is not None:
        out.update(pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"])
    return out


def _prompts(processor) -> list[dict]:
    return [
        _prompt(processor, "How many red shapes are in the picture?"),
        _prompt(processor, "Count the circles.", _image(1)),
    ]


def _request(p: dict, **kw) -> GenerationRequest:
    return GenerationRequest(prompt_ids=p["ids"], images=p["images"], **kw)


def _scorable(hf, p: dict, tokens: list[int]) -> list[int]:
    """The response up to (not including) a sampled image-placeholder token, if the engine sampled one (a
    random model may): engines treat it as text, but transformers counts every placeholder in input_ids as an
    image slot and refuses the forward (13 tokens for 12 features). Logits before it do not depend on it."""
    if p["images"] and hf.config.image_token_id in tokens:
        return tokens[: tokens.index(hf.config.image_token_id)]
    return tokens


def _logits(hf, p: dict, tokens: list[int]) -> torch.Tensor:
    """transformers' logits at the positions that predict `tokens` after the prompt (one full forward)."""
    ids = torch.tensor([p["ids"] + tokens])
    kw = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=(ids == hf.config.image_token_id).long(),
    )
    if p["images"]:
        kw.update(pixel_values=p["pixel_values"], image_grid_thw=p["image_grid_thw"])
    with torch.no_grad():
        logits = hf(**kw).logits[0].double()
    n = len(p["ids"])
    return logits[n - 1 : n - 1 + len(tokens)]


def _atol(hf, p: dict, tokens: list[int], logits: torch.Tensor) -> float:
    """How far two fp32 forwards of this model may put a logit apart (the engine's kernels, KV cache and
    batching vs one transformers forward): twice Higham's bound over the decoder's accumulation chain,
    lengthened for image prompts by the vision tower's chain (per block: qkv, attention over the patches,
    output, MLP in and out; then the merger), relative to the largest logit."""
    extra = 0
    if p["images"]:
        v = hf.config.vision_config
        patches = int(p["image_grid_thw"].prod(-1).sum())
        extra = v.depth * (3 * v.hidden_size + patches + v.hidden_size + 2 * v.intermediate_size)
        extra += 2 * v.hidden_size * v.spatial_merge_size**2
    bound = fp32_forward_bound(hf.config.text_config, len(p["ids"]) + len(tokens), extra_terms=extra)
    return 2 * bound * float(logits.abs().max())


def assert_logprobs_equal(hf, p: dict, tokens: list[int], logprobs: list[float]) -> None:
    tokens = _scorable(hf, p, tokens)
    logprobs = logprobs[: len(tokens)]
    if not tokens:
        return
    logits = _logits(hf, p, tokens)
    ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]
    # a log-probability is a logit minus a log-sum-exp of logits: up to twice a logit's error
    atol = 2 * _atol(hf, p, tokens, logits)
    diff = (torch.tensor(logprobs, dtype=torch.float64) - ref).abs().max().item()
    assert diff <= atol, (diff, atol)


def assert_greedy_equal(hf, p: dict, tokens: list[int], max_new_tokens: int) -> int:
    """The engine's greedy tokens are transformers' argmax at every position, except where transformers'
    top two logits are closer than the two forwards may differ (a near tie either may break): there the
    engine's token must be one of the tied ones, and the comparison ends (the continuations may then
    legitimately differ). Returns the number of positions compared."""
    assert len(tokens) == max_new_tokens or tokens[-1] == hf.generation_config.eos_token_id
    tokens = _scorable(hf, p, tokens)
    if not tokens:
        return 0
    logits = _logits(hf, p, tokens)
    atol = _atol(hf, p, tokens, logits)
    for j, t in enumerate(tokens):
        best = int(logits[j].argmax())
        if t != best:
            gap = float(logits[j, best] - logits[j, t])
            assert gap <= 2 * atol, (
                f"position {j}: engine {t}, transformers {best} (gap {gap:.3g} > {2 * atol:.3g})"
            )
            return j
    return len(tokens)


def test_sampled_text_and_image_prompts_have_transformers_raw_logprobs(served):
    kind, engine, model_dir = served
    hf, processor = _hf(model_dir), _processor(model_dir)
    for p in _prompts(processor):
        for temperature in (1.0, 0.6):  # raw logprobs: the unscaled distribution, whatever the temperature
            samples = engine.generate([_request(p, n=3, temperature=temperature, max_new_tokens=8, seed=5)])[
                0
            ]
            assert len(samples) == 3
            for s in samples:
                assert s.finish_reason in ("stop", "length") and len(s.logprobs) == len(s.token_ids) > 0
                assert_logprobs_equal(hf, p, s.token_ids, s.logprobs)


def test_the_same_seed_gives_the_same_samples_and_another_seed_others(served):
    kind, engine, model_dir = served
    if kind == "sglang":
        pytest.skip(
            "SGLang 0.5.23 honours sampling_seed only with --enable-deterministic-inference, which its CPU "
            "attention backend refuses ('only fa3, fa4, flashinfer, ... are supported'); scripts/gpu_check.sh "
            "checks it on a GPU"
        )
    p = _prompts(_processor(model_dir))[1]
    a, b, c = (
        [s.token_ids for s in engine.generate([_request(p, n=4, max_new_tokens=8, seed=seed)])[0]]
        for seed in (11, 11, 12)
    )
    assert a == b and a != c
    assert len({tuple(t) for t in a}) > 1  # the n samples of one request differ


def test_greedy_continuations_equal_transformers(served):
    kind, engine, model_dir = served
    hf = _hf(model_dir)
    prompts = _prompts(_processor(model_dir))
    outs = engine.generate([_request(p, n=2, temperature=0.0, max_new_tokens=10) for p in prompts])
    for p, samples in zip(prompts, outs):
        assert samples[0].token_ids == samples[1].token_ids
        assert_greedy_equal(hf, p, samples[0].token_ids, 10)


def test_a_stop_string_ends_the_sample_and_is_kept(served):
    kind, engine, model_dir = served
    p = _prompts(_processor(model_dir))[0]
    (free,) = engine.generate([_request(p, temperature=0.0, max_new_tokens=12)])[0]  # greedy: repeatable
    assert len(free.text) >= 6, free.text
    stop = free.text[3:5]
    (cut,) = engine.generate([_request(p, temperature=0.0, max_new_tokens=12, stop=[stop])])[0]
    assert cut.finish_reason == "stop" and cut.text.endswith(stop), (cut.text, stop)
    assert stop not in cut.text[: -len(stop)]
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)]


def test_bad_requests_get_a_clear_error(served):
    kind, engine, model_dir = served
    processor = _processor(model_dir)
    p = _prompts(processor)[1]
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\) .* carries 2 image"):
        engine.generate([_request({**p, "images": [_image(2), _image(3)]}, max_new_tokens=4)])
    with pytest.raises(ValueError, match="pass the raw images"):
        engine.generate(
            [
                GenerationRequest(
                    prompt_ids=p["ids"], pixel_values=p["pixel_values"], image_grid_thw=p["image_grid_thw"]
                )
            ]
        )
    vocab = _hf(model_dir).config.text_config.vocab_size
    with pytest.raises(ValueError, match=f"request 1: prompt token id {vocab + 7} is outside .* {vocab}"):
        engine.generate(
            [_request(p, max_new_tokens=2), GenerationRequest(prompt_ids=[3, vocab + 7], max_new_tokens=4)]
        )
    # longer than the model's context: refused by the server itself, with its reason
    with pytest.raises(EngineError, match=f"{'vLLM' if kind == 'vllm' else 'SGLang'} server .* answered 400"):
        engine.generate([GenerationRequest(prompt_ids=[7] * 5000, max_new_tokens=4)])
    assert engine.health()  # a refused request leaves the server serving
    assert engine.generate([_request(p, max_new_tokens=2, seed=0)])[0][0].token_ids


def test_weight_updates_reach_the_engine_and_its_caches_are_reset(served, tmp_path):
    kind, engine, model_dir = served
    processor = _processor(model_dir)
    prompts = _prompts(processor)
    base = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        base.update(load_file(f))
    engine.generate([_request(p, temperature=0.0, max_new_tokens=6) for p in prompts])  # fill the caches
    g = torch.Generator().manual_seed(7)
    for version in (1, 2):
        new = {n: t + 0.05 * torch.randn(t.shape, generator=g) for n, t in base.items()}
        names = sorted(new)
        engine.begin_update()
        for k in range(0, len(names), 7):  # several buckets
            engine.update_weights([(n, new[n]) for n in names[k : k + 7]])
        engine.end_update()
        hf = _hf(_save_weights(new, model_dir, tmp_path / f"v{version}"))
        outs = engine.generate([_request(p, temperature=0.0, max_new_tokens=8) for p in prompts])
        for p, (s,) in zip(prompts, outs):
            assert_greedy_equal(hf, p, s.token_ids, 8)
            assert_logprobs_equal(hf, p, s.token_ids, s.logprobs)
