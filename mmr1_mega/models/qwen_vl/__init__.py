from mmr1_mega.models.qwen_vl import bridge  # noqa: F401  (registers the families)
