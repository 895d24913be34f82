"""Reward configuration (MMR1 paper, Sec. 4 / Appendix C: reward = format + accuracy, weights 1 and 1)."""

from __future__ import annotations

from dataclasses import dataclass

TIMEOUT_MODES = ("auto", "process")


@dataclass
class RewardConfig:
    """Knobs of the rule-based reward.

    format_weight / accuracy_weight: total = format_weight * format + accuracy_weight * accuracy.
    timeout_s: wall-clock limit of one math-verify call (parse of both sides + verify).
    timeout_mode: "auto" uses a SIGALRM timer on the main thread and a worker process elsewhere;
        "process" always uses the worker process (a hung sympy call is killed, never left running).
    float_rounding / numeric_precision: passed to math_verify.verify.
    require_boxed: accuracy reads only a \\boxed{...} answer when true; otherwise a bare <answer> body counts.
    num_workers: rollouts from server engines are scored while generation goes on, by this many threads,
        each verifying in a worker process of its own (math-verify calls off the main thread).
    """

    format_weight: float = 1.0
    accuracy_weight: float = 1.0
    timeout_s: float = 5.0
    timeout_mode: str = "auto"
    float_rounding: int = 6
    numeric_precision: int = 15
    require_boxed: bool = False
    num_workers: int = 4

    def validate(self) -> RewardConfig:
        """Check the values; returns self. Raises ValueError naming the bad field and what to use."""
        if self.format_weight < 0 or self.accuracy_weight < 0:
            raise ValueError(
                f"reward.format_weight={self.format_weight} / accuracy_weight={self.accuracy_weight}: "
                "weights must be >= 0 (paper: 1.0 and 1.0)"
            )
        if not self.timeout_s > 0:
            raise ValueError(f"reward.timeout_s={self.timeout_s}: must be > 0 seconds (e.g. 5.0)")
        if self.timeout_mode not in TIMEOUT_MODES:
            raise ValueError(f"reward.timeout_mode={self.timeout_mode!r}: use one of {TIMEOUT_MODES}")
        if self.num_workers < 1:
            raise ValueError(f"reward.num_workers={self.num_workers}: must be >= 1 (e.g. 4)")
        if self.float_rounding < 0 or self.numeric_precision <= 0:
            raise ValueError("reward.float_rounding must be >= 0 and reward.numeric_precision > 0")
        return self
