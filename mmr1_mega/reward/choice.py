"""Multiple-choice matching: a ground truth "B" / "(B)" / "B." against answers like "B", "(B) 12", "\\text{B}",
or the option's text when the options are known (parsed from the problem)."""

from __future__ import annotations

import re

LETTERS = "ABCDE"
_GT_LETTER_RE = re.compile(r"\A\s*\(?\s*([A-Ea-e])\s*\)?\s*[.:]?\s*\Z")
# An answer that starts with a letter option: "B", "(B)", "B.", "B)", "B: 12", "(b) twelve", "\text{B}".
_ANSWER_LETTER_RE = re.compile(r"\A\s*(?:\\text\{\s*)?\(?\s*([A-Ea-e])\s*(?:\)|\.|:|\}|\s|\Z)")
# Option lines in a problem: "A. 12", "(B) 15", "C: 20", "D) 7"; one per line or inline after a space.
_OPTION_RE = re.compile(r"(?:^|\s)\(?([A-E])[.:)]\s*(.+?)(?=\s+\(?[A-E][.:)]\s|\n|$)", re.MULTILINE)


def choice_letter(ground_truth: str) -> str | None:
    """The option letter if `ground_truth` names one ("B", "(b)", "B."), else None."""
    m = _GT_LETTER_RE.match(ground_truth) if isinstance(ground_truth, str) else None
    return m.group(1).upper() if m else None


def answer_letter(answer: str) -> str | None:
    """The option letter an answer starts with ("B", "(B) 12", "B. twelve", "\\text{B}"), else None."""
    m = _ANSWER_LETTER_RE.match(answer)
    return m.group(1).upper() if m else None


def parse_choices(problem: str) -> dict[str, str]:
    """Options written in a problem ("A. 12\\nB. 15" or "(A) 12 (B) 15") as {letter: text}; {} if none."""
    options: dict[str, str] = {}
    for letter, text in _OPTION_RE.findall(problem or ""):
        options.setdefault(letter, text.strip())
    # Fewer than two options means the pattern matched prose ("A. Smith said"), not a choice list.
    return options if len(options) >= 2 else {}


def normalize_option_text(text: str) -> str:
    """Lower-case, strip \\text{}, spaces and trailing punctuation, so "\\text{Red }." equals "red"."""
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    return re.sub(r"\s+", " ", text).strip().strip(".").strip().lower()


def match_choice(answer: str, ground_truth: str, choices: dict[str, str] | None = None) -> bool | None:
    """Decide a multiple-choice answer.

    Takes: the extracted answer, the ground truth, the options ({} / None when unknown).
    Returns: True / False when the question is decidable as a choice (the ground truth is a letter, or it is
    an option's text and the answer names a letter), None when choice matching does not apply.
    """
    choices = choices or {}
    gt_letter = choice_letter(ground_truth)
    letter = answer_letter(answer)
    if gt_letter is not None:
        if letter is not None:
            return letter == gt_letter
        if gt_letter in choices:
            return normalize_option_text(answer) == normalize_option_text(choices[gt_letter])
        return False
    if letter is not None and letter in choices:
        return normalize_option_text(choices[letter]) == normalize_option_text(ground_truth)
    return None
