"""frostline under torchrun: DDP and FSDP2 with 2 processes on gloo (CPU).

Each worker script in tests/distributed/ runs its scenarios on both ranks and prints ``PASS <scenario> rank=<r>``
after each one; it is launched once per module (torchrun costs seconds to start) under a hard time limit, after
which the whole process group (torchrun and its workers) is killed. The assertions of a scenario live in the
worker; a test here fails with the workers' output when its scenario did not pass on both ranks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from torch import nn

import frostline
from frostline.distributed import DistributedFreezeError, audit_ranks, check_change, ddp

WORKERS = Path(__file__).parent / "distributed"
LIMIT_S = 120  # one launch; the scenarios of a worker take ~10 s on 2 cores, torchrun's start-up ~10 s more

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(worker: str) -> tuple[int, str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={_free_port()}", str(WORKERS / worker)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)  # its own process group, so a kill reaches the workers
    try:
        output, _ = process.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{worker} did not finish within {LIMIT_S} s; its output:\n{output[-6000:]}")
    try:
        os.killpg(process.pid, signal.SIGKILL)  # nothing should be left; make sure
    except ProcessLookupError:
        pass
    return process.returncode, output


@pytest.fixture(scope="module")
def ddp_run() -> tuple[int, str]:
    return _launch("worker_ddp.py")


@pytest.fixture(scope="module")
def fsdp_run() -> tuple[int, str]:
    return _launch("worker_fsdp.py")


def _passed(run: tuple[int, str], scenario: str) -> None:
    code, output = run
    missing = [rank for rank in (0, 1) if f"PASS {scenario} rank={rank}" not in output]
    assert not missing, f"{scenario!r} did not pass on rank(s) {missing} (exit code {code}):\n{output[-6000:]}"


@needs_gloo
@pytest.mark.parametrize("scenario", [
    "whole",     # frozen parameters never enter a bucket; no find_unused_parameters for a frozen, unused module
    "partial",   # delta/split/mask under DDP and ddp(): replicas bit-identical, frozen elements as at the start
    "refuse",    # (un)freezing under a live wrapper raises; after dropping it, (un)freeze and re-wrap work
    "progressive",  # under find_unused_parameters=True freezing more is allowed, unfreezing is not
    "disagree",  # ranks freezing differently: the same audit finding on every rank; ddp() refuses to wrap
    "stale",     # requires_grad set behind frostline's back: ddp-stale-buckets, then replicas-differ
    "buffers",   # ddp() broadcasts frozen statistics once and leaves them out of the per-step broadcast
])
def test_ddp(ddp_run: tuple[int, str], scenario: str) -> None:
    _passed(ddp_run, scenario)


@needs_gloo
@pytest.mark.parametrize("scenario", [
    "mixed",           # frozen and trainable in one shard group: no grads or optimizer state for the frozen
    "unfreeze_after",  # whole (un)freezing after fully_shard trains as the unsharded reference does
    "state_dict",      # trainable_state_dict gathered on rank 0, loadable into an unsharded copy
    "partial",         # delta/split/mask rows, columns, elements, token rows: exact under clipping; delta/split
                       # hold optimizer state for trainable elements only
    "hsdp",            # the same on a 2-D (replicate x shard) mesh: shards located from the DTensor placements
])
def test_fsdp2(fsdp_run: tuple[int, str], scenario: str) -> None:
    _passed(fsdp_run, scenario)


@needs_gloo
def test_fsdp2_guard_per_rank(fsdp_run: tuple[int, str]) -> None:
    """guard reads each rank's shards (and gathers partial tensors): quiet on training, names a moved value."""
    _passed(fsdp_run, "guard")


@needs_gloo
@pytest.mark.parametrize("run", ["ddp_run", "fsdp_run"])
def test_workers_exit_cleanly(run: str, request: pytest.FixtureRequest) -> None:
    """Teardown drops wrappers, optimizers and graphs before destroy_process_group: no abort at exit."""
    code, output = request.getfixturevalue(run)
    assert code == 0, f"exit code {code}:\n{output[-6000:]}"


# -- in one process, without torchrun ---------------------------------------------------------------------------
def test_collectives_need_a_process_group() -> None:
    model = frostline.freeze(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), "0")
    for call in (lambda: ddp(model), lambda: audit_ranks(model)):
        with pytest.raises(DistributedFreezeError, match="init_process_group"):
            call()


def test_no_wrapper_no_refusal() -> None:
    """Without a live wrapper, check_change lets every change through, whole and partial."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    check_change(model, ["0.weight"], freezing=True, partial=False)
    frostline.freeze(model, "0.weight", rows=[0, 1])
    frostline.unfreeze(frostline.freeze(model, "1"), "1")
    assert frostline.is_frozen(model, "0.weight") == "partial" and frostline.is_frozen(model, "1.weight") is False


@needs_gloo
def test_a_wrapper_built_before_frostlines_first_freezing_call_is_still_seen():
    """Nothing is installed at import; the DDP watch starts at the first freezing call and finds older wrappers."""
    code = (
        "import torch, torch.distributed as dist\n"
        "from torch import nn\n"
        "from torch.nn.parallel import DistributedDataParallel\n"
        "import frostline\n"
        "from frostline.distributed import DistributedFreezeError\n"
        "dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)\n"
        "model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))\n"
        "wrapped = DistributedDataParallel(model)  # before any frostline call\n"
        "try:\n"
        "    frostline.freeze(model, '0')\n"
        "    print('NOT REFUSED')\n"
        "except DistributedFreezeError as error:\n"
        "    print('REFUSED', 'live DistributedDataParallel' in str(error))\n"
        "del wrapped\n"
        "import gc; gc.collect()\n"
        "frostline.freeze(model, '0')  # the wrapper is gone: allowed\n"
        "print('FROZEN', model[0].weight.requires_grad)\n"
        "dist.destroy_process_group()\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "REFUSED True" in run.stdout and "FROZEN False" in run.stdout, run.stdout + run.stderr[-3000:]
