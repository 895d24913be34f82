"""compare_table: two nested benchmark results as one markdown table."""

from __future__ import annotations

from mmr1_mega.perf.compare import compare_table, flatten


def test_flatten_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": {}}) == {
        "a.b": 1,
        "a.c.d": "x",
        "e": [1, 2],
        "f": {},
    }


def test_side_by_side_table():
    a = {
        "step_seconds": 2.0,
        "phases": {"train": {"seconds": 1.5, "share": 0.75}, "sync": {"seconds": 0.5}},
        "layout": {"world_size": 4, "rollout_engine": "local", "pack": True},
        "mfu": {"train": 0.0},
        "only_a": "x|y",
    }
    b = {
        "step_seconds": 3.0,
        "phases": {"train": {"seconds": 1.5, "share": 0.5}},
        "layout": {"world_size": 8, "rollout_engine": "vllm", "pack": False},
        "mfu": {"train": 0.25},
        "overrides": ["train.steps=3"],
        "device": {"peak": None},
    }
    lines = compare_table(a, b, "A", "B").splitlines()
    assert lines[:2] == ["| key | A | B | B / A |", "|---|---|---|---:|"]
    assert lines[2:] == [
        "| step_seconds | 2 | 3 | 1.5 |",
        "| phases.train.seconds | 1.5 | 1.5 | 1 |",
        "| phases.train.share | 0.75 | 0.5 | 0.6667 |",
        "| phases.sync.seconds | 0.5 | — |  |",
        "| layout.world_size | 4 | 8 | 2 |",
        "| layout.rollout_engine | local | vllm |  |",
        "| layout.pack | true | false |  |",  # booleans are not numbers
        "| mfu.train | 0 | 0.25 | — |",  # no ratio to 0
        "| only_a | x\\|y | — |  |",  # a | in a value is escaped
        '| overrides | — | ["train.steps=3"] |  |',
        "| device.peak | — | null |  |",
    ]


def test_identical_results_have_ratio_one():
    r = {"x": {"y": 1.25, "z": 3}, "name": "run"}
    assert compare_table(r, r, "a", "b").splitlines()[2:] == [
        "| x.y | 1.25 | 1.25 | 1 |",
        "| x.z | 3 | 3 | 1 |",
        "| name | run | run |  |",
    ]
