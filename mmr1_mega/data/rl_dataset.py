"""RL prompt dataset in the MMR1-RL schema (see schema.py), indexed by integer for the VAS sampler.

All files are read and every record validated (images decoded once) when the dataset is built, so a bad
record is skipped and counted, and a missing or wholly bad file stops the run before training starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mmr1_mega.data.config import DataConfig
from mmr1_mega.data.errors import BadRecord, DataError
from mmr1_mega.data.images import load_image
from mmr1_mega.data.prompts import encode_prompt
from mmr1_mega.data.readers import read_rows
from mmr1_mega.data.schema import RLRecord, SkipReport, parse_rl_record


class RLDataset:
    """Validated RL prompts from one or more files; dataset[i] builds sample i.

    Attributes: records (list[RLRecord]), report (SkipReport over all files), reports (per file).
    """

    def __init__(
        self, files: Sequence[str], cfg: DataConfig, processor: Any = None, name: str = "rl"
    ) -> None:
        """Read and validate `files`.

        Takes: data files (see readers.read_rows), a DataConfig, optionally a Qwen-VL processor (samples then
        carry token ids and pixels, and over-long prompts are skipped), a name for the log.
        Raises: DataError if no file is given, a file is missing / unreadable, or a file has no usable record.
        """
        cfg.validate()
        if isinstance(files, str):
            files = [files]
        if not files:
            raise DataError(f"{name}: no data files given; set data.train_files / data.val_files")
        self.cfg, self.processor, self.name = cfg, processor, name
        self.records: list[RLRecord] = []
        self.report = SkipReport(cfg.max_reported_bad)
        self.reports: dict[str, SkipReport] = {}
        for path in files:
            self.reports[path] = self._load_file(path)
        self.report.log(name)

    def _load_file(self, path: str) -> SkipReport:
        report = SkipReport(self.cfg.max_reported_bad)
        base_dir = None if path.startswith("hf:") else os.path.dirname(os.path.abspath(path))
        stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
        for row_no, raw in enumerate(read_rows(path)):
            try:
                record = parse_rl_record(raw, self.cfg, base_dir, f"{stem}-{row_no}", self.processor)
            except BadRecord as e:
                report.add(f"{path} row {row_no}", e)
                self.report.add(f"{path} row {row_no}", e)
                continue
            self.records.append(record)
            report.kept += 1
            self.report.kept += 1
        if report.kept == 0:
            detail = f"; {report.summary()}; first: {report.examples[0]}" if report.examples else ""
            raise DataError(f"{path}: no usable record{detail}. Fix the file or drop it from the config")
        return report

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample `index`: index, id, problem, answer, source, images (RGB PIL); with a processor also
        input_ids, mm_token_type_ids (list[int]), pixel_values, image_grid_thw (tensors).

        Raises: IndexError for an index out of range; DataError if an image that validated at load time can no
        longer be read (e.g. the file was removed).
        """
        if not -len(self.records) <= index < len(self.records):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self.records)} records")
        record = self.records[index]
        try:
            images = [
                load_image(x, record.base_dir, self.cfg.max_raw_pixels, self.cfg.max_aspect_ratio)
                for x in record.images
            ]
        except BadRecord as e:
            raise DataError(
                f"{self.name}: record {record.id} became unreadable after loading ({e})"
            ) from None
        sample: dict[str, Any] = {
            "index": index,
            "id": record.id,
            "problem": record.problem,
            "answer": record.answer,
            "source": record.source,
            "images": images,
        }
        if self.processor is not None:
            encoded = encode_prompt(self.processor, record.problem, images, self.cfg.system_prompt)
            sample.update(
                input_ids=encoded.input_ids,
                mm_token_type_ids=encoded.mm_token_type_ids,
                pixel_values=encoded.pixel_values,
                image_grid_thw=encoded.image_grid_thw,
            )
        return sample
