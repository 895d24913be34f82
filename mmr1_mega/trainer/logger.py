"""Metric logging on rank 0: console (rich), a JSONL file (the source of the plots), TensorBoard, wandb.

wandb: "auto" is online when WANDB_API_KEY is set and offline otherwise; "off" disables it. A backend
that fails to start is reported once and skipped, never stopping the run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

log = logging.getLogger("mmr1_mega")

WANDB_ID_FILE = "wandb_run_id"
CONSOLE_KEYS = (
    "reward/mean",
    "reward/accuracy",
    "reward/format",
    "val/accuracy",
    "actor/grad_norm",
    "actor/pg_clipfrac",
    "actor/kl",
    "vas/vps_mean",
    "response/length_mean",
    "perf/step_seconds",
    "perf/tokens_per_second",
)


class MetricsLogger:
    """log(step, metrics) writes everywhere configured; close() flushes. Only rank 0 should build one.

    resume_step: the step a resumed run restarts after (None for a new run). A resumed run continues the
    same wandb run (its id is kept in <output_dir>/wandb_run_id and in every checkpoint) and TensorBoard
    drops what the interrupted run wrote after resume_step, so both step axes continue without doubles.
    """

    def __init__(
        self,
        log_cfg,
        output_dir: str | os.PathLike,
        run_config: dict,
        run_name: str = "run",
        resume_step: int | None = None,
        wandb_run_id: str | None = None,
    ):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
        self.every = max(1, log_cfg.console_every_steps)
        self.tb = None
        self.wandb = None
        if log_cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_step is None else resume_step + 1
                self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=purge)
            except Exception as e:  # noqa: BLE001 - optional backend
                log.warning("tensorboard disabled: %s", e)
        mode = log_cfg.wandb
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.wandb_run_id = wandb_run_id
        id_file = self.dir / WANDB_ID_FILE
        if self.wandb_run_id is None and resume_step is not None and id_file.is_file():
            self.wandb_run_id = id_file.read_text().strip()
        if mode != "off":
            try:
                import wandb

                self.wandb = wandb.init(
                    project=log_cfg.wandb_project,
                    name=run_name,
                    dir=str(self.dir),
                    mode=mode,
                    config=run_config,
                    id=self.wandb_run_id,  # None for a new run: wandb makes one
                    resume="allow",
                    reinit="finish_previous",
                )
                self.wandb_run_id = self.wandb.id
                id_file.write_text(self.wandb_run_id + "\n")
            except Exception as e:  # noqa: BLE001 - optional backend
                log.warning("wandb disabled: %s", e)
        self.t0 = time.time()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        self.jsonl.write(
            json.dumps({"step": step, "time": round(time.time() - self.t0, 3), **metrics}) + "\n"
        )
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(clean, step=step)
        if step % self.every == 0:
            shown = " ".join(f"{k.split('/')[-1]}={clean[k]:.4g}" for k in CONSOLE_KEYS if k in clean)
            log.info("step %d | %s", step, shown)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (later records of a resumed step replace earlier ones)."""
    by_step: dict[tuple, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                by_step[(rec.get("phase", "grpo"), rec["step"])] = rec
    return [by_step[k] for k in sorted(by_step, key=lambda k: (k[0], k[1]))]


class PhaseProgress:
    """A rich progress bar for one stage (GRPO steps, SFT steps) showing the step count, elapsed time, ETA and
    the phase now running ("rollout", "logprob", "train", "sync", "validate", ...).

    PhaseProgress() (no label) is inert, as on ranks other than 0. The bar goes to stderr: drawn live on a
    terminal, and as one final line when it stops in a batch log. A bar that cannot start never stops training.
    """

    def __init__(self, label: str | None = None, total: int = 0, completed: int = 0) -> None:
        self._progress = self._task = None
        self.current_phase = ""
        if label is None:
            return
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                f"[bold]{label}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                "eta",
                TimeRemainingColumn(),
                TextColumn("[cyan]{task.description}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=total, completed=completed)
        except Exception:  # noqa: BLE001 - a progress bar never stops training
            self._progress = None

    def update(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def phase(self, name: str) -> None:
        self.current_phase = name
        if self._progress is not None:
            self._progress.update(self._task, description=name)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
