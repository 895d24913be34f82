"""Where engines run: disaggregated engines on the GPUs the config names (never the actor's), with a
weight-update rendezvous; checked on the real factory with stand-in server processes
(fake_sglang_server.py: SGLang itself needs a GPU)."""

from __future__ import annotations

import json
import sys

import pytest

from mmr1_mega.config import ConfigError, RolloutConfig
from mmr1_mega.rollout.factory import check_engine_gpus, make_engine
from mmr1_mega.rollout.protocol import EngineError
from tests.rollout.test_rollout_sglang_engine import FAKE


@pytest.mark.parametrize(
    "gpus, why",
    [([], "2 distinct GPU ids"), ([2, 2], "2 distinct GPU ids"), ([4, 5, 6], "2 distinct GPU ids")],
)
def test_disaggregated_engines_must_name_their_gpus(gpus, why):
    cfg = RolloutConfig(engine="sglang", colocate=False, num_engines=2, engine_gpus=gpus)
    with pytest.raises(ConfigError, match=why):
        cfg.validate()


def test_each_engines_gpus_must_be_consecutive():
    cfg = RolloutConfig(
        engine="sglang", colocate=False, num_engines=1, engine_tensor_parallel=2, engine_gpus=[4, 6]
    )
    with pytest.raises(ConfigError, match="not consecutive"):
        cfg.validate()


def test_engine_gpus_shared_with_the_actor_are_refused_naming_them():
    with pytest.raises(
        EngineError, match=r"overlap the actor's GPUs \[0, 1, 2, 3\] on this node \(GPUs \[3\]\)"
    ):
        check_engine_gpus([3, 4], [0, 1, 2, 3])
    check_engine_gpus([4, 5], [0, 1, 2, 3])


def test_disaggregated_servers_start_on_the_named_gpus_with_a_rendezvous_port(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # the actor has GPUs 0 and 1 of this node
    cfg = RolloutConfig(
        engine="sglang",
        colocate=False,
        num_engines=2,
        engine_gpus=[2, 3],
        server_launcher=[sys.executable, FAKE, "--record-dir", str(tmp_path)],
        server_timeout_s=60,
    )
    cfg.validate()
    engine = make_engine(cfg, tmp_path / "model", device="cuda")  # placement on GPUs (stand-in servers)
    try:
        assert engine.master_port is not None and not engine.colocated
        starts = []
        for f in tmp_path.glob("*.jsonl"):
            first = json.loads(f.read_text().splitlines()[0])
            starts.append(first["body"]["argv"])
        gpus = sorted(int(argv[argv.index("--base-gpu-id") + 1]) for argv in starts)
        assert gpus == [2, 3]
        assert all("--enable-memory-saver" not in argv for argv in starts)
    finally:
        engine.shutdown()
