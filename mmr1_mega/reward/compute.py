"""Accuracy reward and the batched reward of a GRPO step (MMR1 Sec. 4: r = w_f * format + w_a * accuracy)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmr1_mega.reward.choice import match_choice, parse_choices
from mmr1_mega.reward.config import RewardConfig
from mmr1_mega.reward.format import extract_answer, find_boxed, format_reward
from mmr1_mega.reward.verify import ERROR, OK, TIMEOUT, VerifyOutcome, verify_with_time_limit

log = logging.getLogger(__name__)
_MAX_REPORTED = 3


def _gold_text(ground_truth: str) -> str:
    boxes = find_boxed(ground_truth)
    return boxes[-1].strip() if boxes else ground_truth.strip()


def _normalize_exact(text: str) -> str:
    return " ".join(text.split()).strip(" .").lower()


def judge_answer(
    response: str,
    ground_truth: str,
    timeout_s: float = 5.0,
    choices: dict[str, str] | None = None,
    cfg: RewardConfig | None = None,
) -> VerifyOutcome:
    """Judge one response against its ground truth, reporting how the verdict was reached.

    Order: no extractable answer -> wrong (status ok); multiple choice (choice.match_choice) when it applies;
    exact match after whitespace / case normalisation; otherwise math-verify within `timeout_s`.
    Takes: decoded response, ground truth, time limit, options of the question (or None), a RewardConfig for
    require_boxed / timeout_mode / rounding (defaults otherwise). Returns: VerifyOutcome. Raises: nothing.
    """
    cfg = cfg or RewardConfig()
    if isinstance(ground_truth, (int, float)) and not isinstance(ground_truth, bool):
        ground_truth = str(ground_truth)  # parquet / JSON may store numeric answers as numbers
    if not isinstance(response, str) or not isinstance(ground_truth, str):
        return VerifyOutcome(
            False, ERROR, f"expected strings, got {type(response).__name__} / {type(ground_truth).__name__}"
        )
    answer = extract_answer(response, require_boxed=cfg.require_boxed)
    gold = _gold_text(ground_truth)
    if answer is None or not gold:
        return VerifyOutcome(False, OK, "no answer" if answer is None else "empty ground truth")
    verdict = match_choice(answer, gold, choices)
    if verdict is not None:
        return VerifyOutcome(verdict, OK)
    if _normalize_exact(answer) == _normalize_exact(gold):
        return VerifyOutcome(True, OK)
    return verify_with_time_limit(
        answer, gold, timeout_s, cfg.timeout_mode, cfg.float_rounding, cfg.numeric_precision
    )


def accuracy_reward(
    response: str, ground_truth: str, timeout_s: float = 5.0, choices: dict[str, str] | None = None
) -> float:
    """1.0 if the response's final answer equals the ground truth (see judge_answer), else 0.0.

    Takes: decoded response, ground truth, math-verify time limit in seconds, options (or None).
    Returns: 0.0 or 1.0; a timeout or verifier error scores 0.0. Raises: nothing.
    """
    return 1.0 if judge_answer(response, ground_truth, timeout_s, choices).correct else 0.0


@dataclass
class RewardResult:
    """Rewards of a batch of responses, one entry per response, plus verifier health counts.

    total[i] = format_weight * format[i] + accuracy_weight * accuracy[i]. num_timeouts / num_errors count
    responses whose verification timed out / raised (they score accuracy 0); errors holds the first few
    messages.
    """

    total: list[float]
    format: list[float]
    accuracy: list[float]
    num_timeouts: int = 0
    num_errors: int = 0
    errors: list[str] = field(default_factory=list)

    @staticmethod
    def concat(parts: Sequence[RewardResult]) -> RewardResult:
        """Several batches' results as one, in order (counts added, first messages kept)."""
        return RewardResult(
            total=[x for p in parts for x in p.total],
            format=[x for p in parts for x in p.format],
            accuracy=[x for p in parts for x in p.accuracy],
            num_timeouts=sum(p.num_timeouts for p in parts),
            num_errors=sum(p.num_errors for p in parts),
            errors=[e for p in parts for e in p.errors][:_MAX_REPORTED],
        )

    def metrics(self) -> dict[str, float]:
        """Means for logging: reward, format_rate, accuracy, and the verifier timeout / error counts."""
        n = max(len(self.total), 1)
        return {
            "reward/mean": sum(self.total) / n,
            "reward/format_rate": sum(self.format) / n,
            "reward/accuracy": sum(self.accuracy) / n,
            "reward/verifier_timeouts": float(self.num_timeouts),
            "reward/verifier_errors": float(self.num_errors),
        }


def compute_rewards(
    responses: Sequence[str],
    answers: Sequence[str],
    cfg: RewardConfig | None = None,
    problems: Sequence[str] | None = None,
) -> RewardResult:
    """Format + accuracy rewards of `responses[i]` against `answers[i]`.

    Takes: decoded responses, their ground truths (same length; for GRPO repeat each answer n times),
    a RewardConfig, optionally the problems (their "A. .. B. .." options enable option-text matching).
    Returns: RewardResult. Raises: ValueError if the lengths differ. Timeouts / verifier errors score 0,
    are counted, and the first few are logged.
    """
    cfg = (cfg or RewardConfig()).validate()
    if len(responses) != len(answers) or (problems is not None and len(problems) != len(responses)):
        raise ValueError(
            f"compute_rewards got {len(responses)} responses, {len(answers)} answers"
            + ("" if problems is None else f", {len(problems)} problems")
            + ": pass one ground truth (and problem) per response"
        )
    choice_cache: dict[str, dict[str, str]] = {}
    result = RewardResult(total=[], format=[], accuracy=[])
    for i, (response, answer) in enumerate(zip(responses, answers)):
        choices = None
        if problems is not None:
            problem = problems[i]
            if problem not in choice_cache:
                choice_cache[problem] = parse_choices(problem)
            choices = choice_cache[problem]
        outcome = judge_answer(response, answer, cfg.timeout_s, choices, cfg)
        if outcome.status in (TIMEOUT, ERROR):
            if outcome.status == TIMEOUT:
                result.num_timeouts += 1
            else:
                result.num_errors += 1
            if len(result.errors) < _MAX_REPORTED:
                result.errors.append(f"response {i}: {outcome.status}: {outcome.detail}")
                log.warning("reward: response %d scored 0 (%s: %s)", i, outcome.status, outcome.detail)
        fmt = format_reward(response)
        acc = 1.0 if outcome.correct and outcome.status == OK else 0.0
        result.format.append(fmt)
        result.accuracy.append(acc)
        result.total.append(cfg.format_weight * fmt + cfg.accuracy_weight * acc)
    return result
