"""The tiny task of the trainer tests, built once per session (a short cold-start SFT included)."""

from __future__ import annotations

import pytest

from tests.trainer.tiny_task import make_task


@pytest.fixture(scope="session")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    model_dir, paths = make_task(root)
    return root, model_dir, paths
