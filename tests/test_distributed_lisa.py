"""LayerwiseSampling under torchrun: DDP (re-wrapped at each draw) and FSDP2 (fully_shard per block), 2 processes
on gloo, bounded by test_distributed's launcher (the assertions live in tests/distributed/worker_lisa.py)."""

from __future__ import annotations

import pytest

from test_distributed import _launch, _passed, needs_gloo


@pytest.fixture(scope="module")
def lisa_run() -> tuple[int, str]:
    return _launch("worker_lisa.py")


@needs_gloo
@pytest.mark.parametrize("scenario", [
    "ddp",    # drop the wrapper, step, wrap again at each draw; refused under a live wrapper; replicas identical
    "fsdp2",  # no re-wrap; optimizer state per rank only for what trains; matches an unsharded reference
])
def test_lisa(lisa_run: tuple[int, str], scenario: str) -> None:
    _passed(lisa_run, scenario)


@needs_gloo
def test_worker_exits_cleanly(lisa_run: tuple[int, str]) -> None:
    code, output = lisa_run
    assert code == 0, f"exit code {code}:\n{output[-6000:]}"
