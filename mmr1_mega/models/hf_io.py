"""Reading and writing Hugging Face safetensors directories, one tensor (or one slice) at a time."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(FileNotFoundError):
    """An HF directory is missing, unreadable or incomplete."""


def canonical_name(name: str) -> str:
    """On-disk Qwen-VL names: transformers 5 in-memory names map back to the original checkpoint names."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("model.visual."):
        return name[len("model.") :]
    return name


class HFCheckpoint:
    """A safetensors checkpoint directory read lazily: each rank reads only the slices it needs."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"HF checkpoint directory {self.path} does not exist")
        if not (self.path / "config.json").is_file():
            raise CheckpointError(f"{self.path} has no config.json: is it a Hugging Face model directory?")
        index = self.path / INDEX_NAME
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(self.path.glob("*.safetensors"))
            if not files:
                raise CheckpointError(
                    f"{self.path} has no *.safetensors files (only safetensors checkpoints are read; "
                    "re-save with save_pretrained(safe_serialization=True))"
                )
            weight_map = {}
            for f in files:
                try:
                    with safe_open(f, "pt") as sf:
                        weight_map.update(dict.fromkeys(sf.keys(), f.name))
                except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                    raise CheckpointError(
                        f"{f} is not a readable safetensors file ({e}): re-download it"
                    ) from e
        self.files = {canonical_name(k): (self.path / v, k) for k, v in weight_map.items()}
        for file, _ in set(self.files.values()):
            if not file.is_file():
                raise CheckpointError(f"{file} is listed in {INDEX_NAME} but missing")
        self._handles: dict[Path, object] = {}

    def config(self):
        """The transformers config of the checkpoint."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.path)

    def names(self) -> list[str]:
        return sorted(self.files)

    def _handle(self, file: Path):
        if file not in self._handles:
            self._handles[file] = safe_open(file, "pt")
        return self._handles[file]

    def _entry(self, name: str):
        try:
            return self.files[name]
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is missing from {self.path}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        file, key = self._entry(name)
        return tuple(self._handle(file).get_slice(key).get_shape())

    def read(self, name: str, dim: int | None = None, start: int = 0, stop: int = 0) -> torch.Tensor:
        """The tensor `name`, or its [start, stop) slice along dim (only that slice is read from disk)."""
        file, key = self._entry(name)
        if dim is None:
            return self._handle(file).get_tensor(key)
        sl = self._handle(file).get_slice(key)
        index = [slice(None)] * len(sl.get_shape())
        index[dim] = slice(start, stop)
        return sl[tuple(index)]


class ShardedWriter:
    """Writes (name, tensor) pairs into safetensors files of at most max_shard_mb each."""

    def __init__(self, out_dir: str | os.PathLike, prefix: str, max_shard_mb: float = 4096):
        self.out_dir, self.prefix = Path(out_dir), prefix
        self.limit = int(max_shard_mb * 2**20)
        self.buffer: dict[str, torch.Tensor] = {}
        self.size = 0
        self.written: list[tuple[str, list[str]]] = []  # (file name, tensor names)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.size + nbytes > self.limit:
            self.flush()
        self.buffer[name] = tensor.detach().to("cpu").contiguous()
        self.size += nbytes

    def flush(self) -> None:
        if not self.buffer:
            return
        fname = f"{self.prefix}-{len(self.written):05d}.safetensors"
        save_file(self.buffer, str(self.out_dir / fname), metadata={"format": "pt"})
        self.written.append((fname, sorted(self.buffer)))
        self.buffer, self.size = {}, 0


def finalize_index(out_dir: str | os.PathLike, parts: list[tuple[str, list[str]]]) -> None:
    """Rename shard files to model-0000i-of-0000N.safetensors and write the index."""
    out_dir = Path(out_dir)
    total = len(parts)
    weight_map, total_size = {}, 0
    for i, (fname, names) in enumerate(parts, start=1):
        final = "model.safetensors" if total == 1 else f"model-{i:05d}-of-{total:05d}.safetensors"
        os.replace(out_dir / fname, out_dir / final)
        total_size += (out_dir / final).stat().st_size
        weight_map.update(dict.fromkeys(names, final))
    if total > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2))


def copy_assets(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy the non-weight files of an HF directory (config, tokenizer, processor, chat template)."""
    src, dst = Path(src), Path(dst)
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name != INDEX_NAME:
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    return copied
