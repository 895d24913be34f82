"""Every body the SGLang adapter builds fits SGLang's own request types (read from the pinned source)."""

from __future__ import annotations

import base64
import io
import pickle

import pytest
import torch

from mmr1_mega.rollout import sglang_payloads as P
from mmr1_mega.rollout.protocol import EngineError, GenerationRequest
from mmr1_mega.rollout.sglang import serialize_flattened_bucket
from mmr1_mega.rollout.sglang_server import SGLangServer
from tests.rollout import sglang_source as S


def _requests(g: torch.Generator) -> list[GenerationRequest]:
    ids = torch.randint(8, 128, (2, 9), generator=g).tolist()
    return [
        GenerationRequest(
            prompt_ids=ids[0],
            n=3,
            temperature=0.7,
            top_p=0.9,
            top_k=20,
            max_new_tokens=5,
            stop=["w9"],
            stop_token_ids=[2],
            seed=4,
        ),
        GenerationRequest(
            prompt_ids=ids[1][:3] + [3, 5, 5, 5, 4] + ids[1][3:6] + [3, 5, 5, 4] + ids[1][6:],
            n=2,
            temperature=0.0,
            images=["/data/a.png", b"\x89PNG"],
        ),
    ]


def test_generate_body_fits_generate_req_input_and_sampling_params():
    body = P.generate_payload(_requests(torch.Generator().manual_seed(1)), image_token_id=5)
    assert S.validate(body, "GenerateReqInput") == []
    for params in body["sampling_params"]:
        assert S.validate(params, "SamplingParams", S.SAMPLING) == []


def test_generate_body_has_one_row_per_sample_with_distinct_seeds():
    reqs = _requests(torch.Generator().manual_seed(2))
    body = P.generate_payload(reqs, image_token_id=5)
    # one placeholder per image: SGLang expands each itself
    p = reqs[1].prompt_ids
    collapsed = p[:3] + [3, 5, 4] + p[8:11] + [3, 5, 4] + p[15:]
    assert body["input_ids"] == [reqs[0].prompt_ids] * 3 + [collapsed] * 2
    assert [p.get("sampling_seed") for p in body["sampling_params"]] == [4, 5, 6, None, None]
    assert body["image_data"][:3] == [[]] * 3
    assert (
        body["image_data"][3][0] == "/data/a.png" and base64.b64decode(body["image_data"][3][1]) == b"\x89PNG"
    )


def test_generate_refuses_processed_images_without_raw_ones():
    r = GenerationRequest(
        prompt_ids=[9, 10], pixel_values=torch.zeros(4, 8), image_grid_thw=torch.tensor([[1, 2, 2]])
    )
    with pytest.raises(ValueError, match="pass the raw images"):
        P.generate_payload([r])


def test_image_placeholders_must_match_the_images():
    reqs = _requests(torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="image_token_id"):
        P.generate_payload(reqs)
    reqs[1].images = reqs[1].images[:1]
    with pytest.raises(ValueError, match=r"2 image placeholder\(s\) \(token 5\) but the request carries 1"):
        P.generate_payload(reqs, image_token_id=5)


def test_an_engine_that_expands_images_differently_is_reported():
    r = GenerationRequest(prompt_ids=[9, 3, 5, 5, 4, 10], images=[b"\x89PNG"])
    row = {
        "output_ids": [7],
        "meta_info": {
            "prompt_tokens": 9,
            "finish_reason": {"type": "length"},
            "output_token_logprobs": [[-1.0, 7, None]],
        },
    }
    with pytest.raises(
        EngineError, match="expanded the prompt's images to 9 prompt tokens, the trainer to 6"
    ):
        P.parse_generate_response([row], [r])
    row["meta_info"]["prompt_tokens"] = 6
    assert P.parse_generate_response([row], [r])[0][0].token_ids == [7]


def test_generate_answer_is_parsed_into_n_outputs_per_request():
    reqs = _requests(torch.Generator().manual_seed(3))
    rows = [
        {
            "text": f"t{i}",
            "output_ids": [10 + i, 2],
            "meta_info": {
                "finish_reason": {"type": "stop" if i % 2 else "length"},
                "output_token_logprobs": [[-0.1 * i, 10 + i, None], [-0.2, 2, None]],
            },
        }
        for i in range(5)
    ]
    out = P.parse_generate_response(rows, reqs)
    assert [len(o) for o in out] == [3, 2]
    assert out[1][1].token_ids == [14, 2] and out[1][1].finish_reason == "length"
    assert out[0][1].logprobs == pytest.approx([-0.1, -0.2]) and out[0][1].text == "t1"


def test_an_aborted_sample_is_an_engine_error():
    rows = [
        {"text": "", "output_ids": [], "meta_info": {"finish_reason": {"type": "abort", "message": "oom"}}}
    ]
    with pytest.raises(EngineError, match="abort"):
        P.parse_generate_response(rows, [GenerationRequest(prompt_ids=[9])])


def test_weight_update_bodies_fit_their_request_types():
    bucket = [
        ("model.norm.weight", torch.randn(8)),
        ("lm_head.weight", torch.randn(4, 8, dtype=torch.bfloat16)),
    ]
    assert S.validate(P.update_from_tensor_payload(["abc", "def"]), "UpdateWeightsFromTensorReqInput") == []
    assert S.validate(P.update_from_distributed_payload(bucket), "UpdateWeightsFromDistributedReqInput") == []
    assert S.validate(P.init_group_payload("10.0.0.1", 29600, 1, 3), "InitWeightsUpdateGroupReqInput") == []
    assert S.validate(P.destroy_group_payload(), "DestroyWeightsUpdateGroupReqInput") == []
    assert S.validate(P.pause_payload(), "PauseGenerationReqInput") == []
    assert S.validate(P.begin_update_payload(), "BeginWeightUpdateReqInput") == []
    assert S.validate(P.end_update_payload(), "EndWeightUpdateReqInput") == []
    assert S.validate(P.continue_payload(), "ContinueGenerationReqInput") == []
    for cls in ("ReleaseMemoryOccupationReqInput", "ResumeMemoryOccupationReqInput"):
        assert (
            S.validate(P.memory_payload(), cls) == []
            and S.validate(P.memory_payload(["kv_cache"]), cls) == []
        )


def test_the_validator_rejects_what_sglang_would():
    assert S.validate({"names": ["a"]}, "UpdateWeightsFromDistributedReqInput")  # dtypes / shapes missing
    assert S.validate({"mode": "sleep"}, "PauseGenerationReqInput")  # not a Literal value
    assert S.validate({"input_idz": [1]}, "GenerateReqInput")  # unknown field
    assert S.validate(
        {"master_address": "h", "master_port": "1", "rank_offset": 1, "world_size": 2},
        "InitWeightsUpdateGroupReqInput",
    )  # port as a string


def test_every_endpoint_the_adapter_posts_to_exists_in_sglang_http_server():
    routes = S.routes()
    for path in (
        "/generate",
        "/update_weights_from_tensor",
        "/update_weights_from_distributed",
        "/init_weights_update_group",
        "/destroy_weights_update_group",
        "/pause_generation",
        "/continue_generation",
        "/flush_cache",
        "/release_memory_occupation",
        "/resume_memory_occupation",
    ):
        assert "POST" in routes.get(path, set()), path
    assert "GET" in routes["/health"]


def test_server_command_uses_only_sglang_launch_flags():
    cmd = SGLangServer("/models/qwen", port=30001, tp_size=2, seed=3).command()
    flags = [a for a in cmd if a.startswith("--")]
    assert set(flags) <= S.server_flags(), set(flags) - S.server_flags()
    assert cmd[cmd.index("--tp-size") + 1] == "2" and "--enable-memory-saver" in cmd


class _SGLangUnpickler(pickle.Unpickler):
    """SGLang's SafeUnpickler policy: only the globals its source allows."""

    def find_class(self, module, name):
        if (module, name) not in S.allowed_unpickle_globals():
            raise pickle.UnpicklingError(f"SGLang would block {module}.{name}")
        return super().find_class(module, name)


def test_flattened_bucket_payload_unpickles_under_sglang_policy_and_rebuilds_the_tensors():
    tb = S.load_tensor_bucket_module()
    g = torch.Generator().manual_seed(int(torch.randint(0, 1000, ()).item()))
    bucket = [(f"model.layers.{i}.mlp.up_proj.weight", torch.randn(3 + i, 5, generator=g)) for i in range(3)]
    payloads = serialize_flattened_bucket(bucket, tp_size=2)
    assert len(payloads) == 2
    data = _SGLangUnpickler(io.BytesIO(base64.b64decode(payloads[1]))).load()
    rebuilt = tb.FlattenedTensorBucket(flattened_tensor=data["flattened_tensor"], metadata=data["metadata"])
    got = rebuilt.reconstruct_tensors()
    assert [n for n, _ in got] == [n for n, _ in bucket]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, bucket))
