"""Every test of tests/ops runs the Triton kernels under the interpreter (CPU).

triton.jit reads TRITON_INTERPRET when a kernel is decorated; mmr1_mega.ops.grpo.kernels() re-imports the
kernel module whenever the setting differs from the one it was built under, so setting the variable per
test (instead of for the whole session) is enough and leaves other rooms' tests untouched.
"""

import pytest


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
