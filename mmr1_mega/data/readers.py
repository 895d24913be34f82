"""Row readers for data files: .jsonl, .json (a list of objects), .parquet (pyarrow), and `datasets`
(a save_to_disk folder, or "hf:<name>[:<split>]") when that library is installed.

A missing, unreadable or unsupported file raises DataError before any training; a malformed line inside a
readable file is yielded as a BadRecord so that the caller skips and counts it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from mmr1_mega.data.errors import BadRecord, DataError

MALFORMED_ROW = "malformed row"


def _read_jsonl(path: str) -> Iterator[Any]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                yield BadRecord(MALFORMED_ROW, f"line {line_no}: {e.msg}")


def _read_json(path: str) -> Iterator[Any]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix the file or use .jsonl"
            ) from None
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json data file must hold a list of records; use .jsonl for one per line")
    yield from data


def _read_parquet(path: str) -> Iterator[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow; `pip install pyarrow`") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
        raise DataError(
            f"{path}: not a readable parquet file ({type(e).__name__}: {e}); re-export it"
        ) from None
    for batch in parquet.iter_batches(batch_size=256):
        yield from batch.to_pylist()


def _read_datasets(spec: str) -> Iterator[Any]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: reading a Hugging Face dataset needs `pip install datasets`") from None
    try:
        if spec.startswith("hf:"):
            name, _, split = spec[3:].partition(":")
            ds = datasets.load_dataset(name, split=split or "train")
        else:
            ds = datasets.load_from_disk(spec)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"]
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{spec}: `datasets` could not load it ({type(e).__name__}: {e})") from None
    # Rows are read one by one: `datasets` decodes images on access, and a row whose image fails to decode is
    # a bad record, not a reason to stop.
    for i in range(len(ds)):
        try:
            yield ds[i]
        except Exception as e:  # noqa: BLE001
            yield BadRecord("unreadable image", f"row {i}: {type(e).__name__}: {e}")


def read_rows(path: str) -> Iterator[Any]:
    """Rows of one data file, in order.

    Takes: a .jsonl / .json / .parquet path, a `datasets` save_to_disk folder, or "hf:<name>[:<split>]".
    Yields: each row (usually a dict), or a BadRecord for a malformed line.
    Raises: DataError if the file is missing, unreadable, or of an unsupported kind.
    """
    if path.startswith("hf:"):
        yield from _read_datasets(path)
        return
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "dataset_info.json")) or os.path.isfile(
            os.path.join(path, "dataset_dict.json")
        ):
            yield from _read_datasets(path)
            return
        raise DataError(
            f"{path} is a folder but not a `datasets` save_to_disk folder; give the data file itself"
        )
    if not os.path.isfile(path):
        raise DataError(
            f"data file {path!r} not found; check the path (relative paths start at the working dir)"
        )
    ext = os.path.splitext(path)[1].lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}
    if ext not in readers:
        raise DataError(f"{path}: unsupported data file type {ext!r}; use .jsonl, .json or .parquet")
    try:
        yield from readers[ext](path)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; is it really {ext}?") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
