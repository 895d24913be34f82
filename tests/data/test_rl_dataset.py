"""RL dataset: jsonl / json / parquet round trips, bad records skipped and counted, bad files stop early."""

import base64
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mmr1_mega.data import DataConfig, DataError, RLDataset
from tests.data.conftest import png_bytes, random_image


def _records(rng, tmp_path, n=4):
    """n valid records with images saved as files; returns (records using paths, their image bytes)."""
    records, blobs = [], []
    for i in range(n):
        data = png_bytes(random_image(rng))
        (tmp_path / f"img{i}.png").write_bytes(data)
        records.append(
            {"id": f"r{i}", "problem": f"Question {i}?", "answer": str(i), "images": [f"img{i}.png"]}
        )
        blobs.append(data)
    return records, blobs


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_paths_and_parquet_bytes_give_the_same_samples(tmp_path, cfg, processor):
    rng = np.random.default_rng()
    records, blobs = _records(rng, tmp_path)
    a = RLDataset([_write_jsonl(tmp_path / "a.jsonl", records)], cfg, processor)
    as_bytes = [dict(r, images=[b]) for r, b in zip(records, blobs)]
    as_dicts = [dict(r, images=[{"bytes": b, "path": None}]) for r, b in zip(records, blobs)]
    pq.write_table(pa.Table.from_pylist(as_bytes), tmp_path / "b.parquet")
    pq.write_table(pa.Table.from_pylist(as_dicts), tmp_path / "c.parquet")
    b = RLDataset([str(tmp_path / "b.parquet")], cfg, processor)
    c = RLDataset([str(tmp_path / "c.parquet")], cfg, processor)
    assert len(a) == len(b) == len(c) == len(records)
    for i in range(len(records)):
        for other in (b, c):
            assert a[i]["input_ids"] == other[i]["input_ids"]
            assert torch.equal(a[i]["pixel_values"], other[i]["pixel_values"])
            assert a[i]["answer"] == other[i]["answer"] == str(i)


def test_json_list_with_base64_image_dicts(tmp_path, cfg):
    rng = np.random.default_rng()
    image = random_image(rng)
    row = {"problem": "p", "answer": 7, "images": [{"bytes": base64.b64encode(png_bytes(image)).decode()}]}
    (tmp_path / "d.json").write_text(json.dumps([row]))
    ds = RLDataset([str(tmp_path / "d.json")], cfg)
    sample = ds[0]
    assert sample["answer"] == "7" and sample["id"] == "d-0"
    assert np.array_equal(np.asarray(sample["images"][0]), np.asarray(image))


def test_samples_are_drawn_by_integer_index_across_files(tmp_path, cfg):
    rng = np.random.default_rng()
    records, _ = _records(rng, tmp_path, 5)
    f1 = _write_jsonl(tmp_path / "x.jsonl", records[:2])
    f2 = _write_jsonl(tmp_path / "y.jsonl", records[2:])
    ds = RLDataset([f1, f2], cfg)
    order = rng.permutation(len(ds))
    assert [ds[int(i)]["id"] for i in order] == [records[i]["id"] for i in order]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_each_kind_of_bad_record_is_skipped_and_counted(tmp_path, cfg, processor, caplog):
    rng = np.random.default_rng()
    good, _ = _records(rng, tmp_path, 2)
    (tmp_path / "big.png").write_bytes(png_bytes(Image.new("RGB", (400, 400))))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "long.png").write_bytes(png_bytes(Image.new("RGB", (398, 2))))
    bad = [
        {"problem": "p", "images": []},  # missing answer
        {"problem": "p", "answer": "  ", "images": []},  # blank answer
        {"problem": "", "answer": "1"},  # empty problem
        {"answer": "1"},  # no problem
        {"problem": "p", "answer": "1", "images": ["bad.png"]},  # unreadable image
        {"problem": "p", "answer": "1", "images": ["nowhere.png"]},  # missing image file
        {"problem": "p", "answer": "1", "images": ["big.png"]},  # over raw pixel limit
        {"problem": "p", "answer": "1", "images": ["long.png"]},  # resizes over max_pixels
        {"problem": "p", "answer": "1", "images": ["img0.png"] * 3},  # too many images
        {"problem": "<image><image>", "answer": "1", "images": ["img0.png"]},  # marker mismatch
        {"problem": "word " * 400, "answer": "1", "images": []},  # prompt too long
        [1, 2],  # not a record
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good + bad) + "{not json\n")
    small = DataConfig(
        min_pixels=cfg.min_pixels,
        max_pixels=8 * 28 * 28,  # the 398x2 image resizes to 420x28 > this
        max_raw_pixels=300 * 300,
        max_images_per_sample=2,
        max_prompt_len=300,
        max_reported_bad=3,
    )
    with caplog.at_level(logging.WARNING):
        ds = RLDataset([str(path)], small, processor)
    assert len(ds) == 2
    assert dict(ds.report.counts) == {
        "missing answer": 2,
        "empty problem": 2,
        "unreadable image": 2,
        "image over limits": 2,
        "too many images": 1,
        "image marker mismatch": 1,
        "prompt too long": 1,
        "not a record": 1,
        "malformed row": 1,
    }
    assert ds.report.skipped == len(bad) + 1 and ds.report.kept == 2
    assert len(ds.report.examples) == 3
    assert "skipped 13" in caplog.text and "missing answer" in caplog.text


def test_wholly_bad_file_is_an_error_before_training(tmp_path, cfg):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p"}, {"answer": "1"}])
    with pytest.raises(DataError, match="no usable record"):
        RLDataset([path], cfg)


@pytest.mark.parametrize(
    "name,content", [("missing.jsonl", None), ("data.csv", "a,b\n"), ("x.parquet", "junk")]
)
def test_missing_or_unreadable_file_is_a_clear_error(tmp_path, cfg, name, content):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as e:
        RLDataset([str(tmp_path / name)], cfg)
    assert name in str(e.value) and "\n" not in str(e.value)


def test_no_files_is_an_error(cfg):
    with pytest.raises(DataError, match="no data files"):
        RLDataset([], cfg)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_pixels": 0},
        {"min_pixels": 100, "max_pixels": 50},
        {"max_prompt_len": 0},
        {"train_files": "a.jsonl"},
    ],
)
def test_invalid_data_config_is_rejected(kwargs):
    with pytest.raises(ValueError, match="data"):
        DataConfig(**kwargs).validate()
