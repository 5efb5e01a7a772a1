"""One command for a start and every restart (issue 26 item 1): a 2-process torchrun job with
``--resume auto`` and ``--max-restarts 1`` whose rank 1 is SIGKILLed in epoch 2 finishes by
itself, with the final weights of the same job run without the kill, bit for bit.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pmm_model.run.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]

# The training CLI's run, whose rank 1 kills itself in the forward pass of epoch 2 on the first
# attempt only (torchrun counts attempts in TORCHELASTIC_RESTART_COUNT) when asked to.
KILLED_SCRIPT = """
import os, signal, sys
from pmm_model.cli.train import parse_args
from pmm_model.run.engine import Engine
from pmm_model.run.hooks import Hook

KILL = sys.argv[1] == "kill" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

class Epoch(Hook):
    epoch = 0
    def before_epoch(self, epoch):
        self.epoch = epoch

class KilledInEpoch2(Engine):
    def forward_loss(self, images, pids):
        if KILL and self.dist.rank == 1 and CLOCK.epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward_loss(images, pids)

CLOCK = Epoch()
engine = parse_args(sys.argv[2:], KilledInEpoch2)
engine.register_hook(CLOCK)
engine.run()
"""


def _job(script: Path, kill: bool, out: Path, root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "--max-restarts", "1", str(script), "kill" if kill else "straight",
        "--data", "folder", "--root", str(root), "--output-dir", str(out),
        "--backbone", "resnet18", "--height", "64", "--width", "32", "--ids-per-batch", "2",
        "--images-per-id", "2", "--block-size", "1", "1", "--epochs", "2", "--eval-every", "2",
        "--workers", "0", "--device", "cpu", "--seed", "5", "--resume", "auto",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=out.parent, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_a_killed_rank_restarts_with_the_same_command_and_ends_as_the_straight_job(
    tiny_root, tmp_path
):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SCRIPT)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _job(script, False, straight, tiny_root)
    _job(script, True, killed, tiny_root)
    log = (killed / "train.log").read_text()
    assert log.index("starting a new run") < log.index("continuing the run in")
    assert "resumed from" in log and "after epoch 1" in log
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(straight / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in b["model"].items():
        assert torch.equal(a["model"][name], tensor), name
    scores = [{k: m[k] for k in ("epoch", "rank1", "mAP", "mINP")} for m in b["metrics"]]
    assert [{k: m[k] for k in ("epoch", "rank1", "mAP", "mINP")} for m in a["metrics"]] == scores
