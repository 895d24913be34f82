"""`mmr1-mega`: one thin command line over the rooms. Each subcommand parses nothing itself beyond its
name; the room's own `main(argv)` owns its options (`mmr1-mega convert --help`, ...)."""

from __future__ import annotations

import importlib
import importlib.util
import sys

# (command, subcommand or None) -> "module:function"; imported only when called (megatron imports are slow)
COMMANDS: dict[tuple[str, str | None], tuple[str, str]] = {
    ("train", None): ("mmr1_mega.trainer.main:train_main", "GRPO + VAS training (YAML config + overrides)"),
    ("sft", None): ("mmr1_mega.trainer.main:sft_main", "cold-start SFT on the same actor"),
    ("check", None): ("mmr1_mega.trainer.layout:main", "does a config fit N nodes x G GPUs (before launch)"),
    ("eval", None): ("mmr1_mega.eval.main:main", "score a checkpoint on a benchmark file"),
    ("demo", None): (
        "mmr1_mega.trainer.demo:main",
        "the CPU demo: synthetic visual math, SFT then GRPO + VAS",
    ),
    ("convert", None): ("mmr1_mega.models.convert:main", "HF <-> megatron checkpoint conversion"),
    ("data", "synth"): (
        "mmr1_mega.data.synthetic:main",
        "write the synthetic visual-counting task (+ demo processor)",
    ),
    ("bench", "vps"): ("mmr1_mega.vas.bench:main", "VPS / self-BLEU speed vs NLTK"),
    ("bench", "loss"): ("mmr1_mega.ops.bench:main", "fused GRPO loss: eager vs compile vs Triton"),
    ("bench", "sync"): ("mmr1_mega.sync.bench:main", "weight sync seconds and GB/s per transport"),
    ("bench", "rollout"): ("mmr1_mega.rollout.bench:main", "rollout tokens/s: local vs vLLM vs SGLang"),
    ("bench", "step"): (
        "mmr1_mega.trainer.bench:main",
        "GRPO steps of a config at real dimensions: per-phase time, tokens/s, MFU, memory (JSON)",
    ),
    ("plot", "vas"): ("mmr1_mega.vas.plot:main", "VPS histograms and transitions per refresh (PNG)"),
}


def _usage() -> str:
    lines = ["usage: mmr1-mega COMMAND [SUBCOMMAND] [options]", "", "commands:"]
    for (cmd, sub), (target, text) in COMMANDS.items():
        if _available(target):
            lines.append(f"  {cmd + (' ' + sub if sub else ''):<16} {text}")
    return "\n".join(lines)


def _available(target: str) -> bool:
    module = target.split(":")[0]
    return importlib.util.find_spec(module) is not None


def quiet_known_warnings() -> None:
    """megatron-core warns at import about optional GPU packages; say it once in the README instead."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex).* not installed.*")
    warnings.filterwarnings("ignore", message=r"full scope is deprecated.*")


def main(argv: list[str] | None = None) -> int:
    quiet_known_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    key = (cmd, None)
    if key not in COMMANDS:
        sub = rest[0] if rest else None
        key = (cmd, sub)
        if key not in COMMANDS:
            subs = sorted(s for (c, s), (t, _) in COMMANDS.items() if c == cmd and s and _available(t))
            if subs:
                print(f"mmr1-mega {cmd}: choose one of: {', '.join(subs)}", file=sys.stderr)
            else:
                print(f"mmr1-mega: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
            return 2
        rest = rest[1:]
    target = COMMANDS[key][0]
    if not _available(target):
        print(f"mmr1-mega {cmd}: not available in this build ({target} is missing)", file=sys.stderr)
        return 2
    module_name, func = target.split(":")
    fn = getattr(importlib.import_module(module_name), func)
    result = fn(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
