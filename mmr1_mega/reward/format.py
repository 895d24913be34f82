"""Format reward and answer extraction for the think / answer / boxed response format (MMR1, Sec. 4).

Accepted format (format_reward == 1.0), exactly:

    [whitespace] <think> R </think> [whitespace] <answer> A </answer> [whitespace]

- R (the reasoning) contains at least one non-whitespace character;
- A contains a \\boxed{...} whose braces balance and whose content is not blank; text around the box
  inside <answer> is allowed (e.g. "The count is \\boxed{3}.");
- each of the four tags occurs exactly once, in that order, and nothing but whitespace lies outside them.

Anything else scores 0.0 (no partial credit): a missing / repeated / misordered tag, text before <think> or
after </answer>, an empty reasoning, an answer without a box, an unbalanced box.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
_FORMAT_RE = re.compile(r"\A\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*\Z", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def find_boxed(text: str) -> list[str]:
    """Contents of every balanced \\boxed{...} (or \\fbox{...}) in `text`, in order.

    Takes: any string. Returns: list of box contents (nested braces kept); an unclosed box is left out.
    """
    found = []
    for m in _BOX_RE.finditer(text):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:i])
                    break
    return found


def format_reward(text: str) -> float:
    """1.0 if `text` follows the accepted format of this module's docstring, else 0.0.

    Takes: the decoded response (without the end-of-turn token). Returns: 0.0 or 1.0. Raises: nothing
    (a non-string scores 0.0).
    """
    if not isinstance(text, str):
        return 0.0
    m = _FORMAT_RE.match(text)
    if m is None or any(text.count(tag) != 1 for tag in _TAGS):
        return 0.0
    reasoning, answer = m.group(1), m.group(2)
    if not reasoning.strip():
        return 0.0
    return 1.0 if any(box.strip() for box in find_boxed(answer)) else 0.0


def extract_answer(text: str, require_boxed: bool = False) -> str | None:
    """The final answer of a response, or None when it gives none.

    Order of preference: the last \\boxed{} inside the last <answer> block; the last \\boxed{} anywhere;
    (unless require_boxed) the stripped body of the last <answer> block. Blank answers give None.
    Takes: the decoded response. Returns: the answer string or None.
    """
    if not isinstance(text, str):
        return None
    blocks = _ANSWER_RE.findall(text)
    candidates = []
    if blocks:
        candidates += find_boxed(blocks[-1])[-1:]
    candidates += find_boxed(text)[-1:]
    if blocks and not require_boxed:
        candidates.append(blocks[-1])
    for c in candidates:
        if c.strip():
            return c.strip()
    return None
