"""The GRPO loss benchmark tool runs on CPU at a tiny size and prints the JSON it documents."""

import json

from mmr1_mega.ops.bench import main


def test_bench_prints_json_with_timings_bytes_and_bandwidth_for_eager_and_triton(capsys, tmp_path):
    out = tmp_path / "bench.json"
    argv = [
        "--num-prompts",
        "2",
        "--rollouts",
        "3",
        "--max-len",
        "16",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--skip-compile",
        "--dtype",
        "fp32",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(out.read_text())
    assert result["device"] == "cpu" and result["triton_interpreted"] is True
    assert result["padded_tokens"] == 6 * 16 and result["bytes_min"] == 6 * 16 * (4 * 4 + 1)
    assert result["copy_bandwidth_gbs"] > 0
    assert set(result["impls"]) == {"eager", "triton"}
    for entry in result["impls"].values():
        assert entry["fwd_bwd_ms_median"] > 0 and 0 < entry["min_bytes_bw_fraction"]
