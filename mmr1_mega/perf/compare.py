"""Two benchmark results side by side (`mmr1-mega bench step --compare A.json B.json`)."""

from __future__ import annotations

import json
import math

MISSING = "—"


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict of dotted keys ({"a": {"b": 1}} -> {"a.b": 1}), in the nesting order; an
    empty nested dict stays a value."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _numeric(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _cell(v) -> str:
    if _numeric(v):
        return str(v) if isinstance(v, int) else f"{v:.6g}"
    text = v if isinstance(v, str) else json.dumps(v)
    return text.replace("|", "\\|").replace("\n", " ")


def _ratio(a, b) -> str:
    if not (_numeric(a) and _numeric(b)):
        return ""
    if a == 0 or not (math.isfinite(a) and math.isfinite(b)):
        return MISSING
    return f"{b / a:.4g}"


def compare_table(a: dict, b: dict, name_a: str, name_b: str) -> str:
    """A markdown table of two (nested) JSON results: one row per dotted key (a's keys in order, then
    those only b has), each side's value (MISSING where a side lacks the key) and, where both are numbers,
    the ratio b / a (MISSING when a is 0 or either is not finite). Non-numeric values are shown as they are
    (lists and null as JSON)."""
    fa, fb = flatten(a), flatten(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    head = ["key", _cell(name_a), _cell(name_b), f"{_cell(name_b)} / {_cell(name_a)}"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|"]
    for k in keys:
        va, vb = fa.get(k, MISSING), fb.get(k, MISSING)
        ratio = _ratio(va, vb) if k in fa and k in fb else ""
        cells = [_cell(k), _cell(va) if k in fa else MISSING, _cell(vb) if k in fb else MISSING, ratio]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
