"""A 2-process DDP job (gloo on CPU, under torchrun): same weights on both ranks, one
checkpoint, rank 0 alone logging, and resume from a 1-process and from a 2-process checkpoint;
then jobs whose ranks misbehave (other options, a NaN on one rank, a hang) fail clearly and fast;
then two torchrun launchers as two nodes of one process each, with and without a shared folder.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

import pytest
import torch
from oracles import tiny_run_options
from oracles.runs import run_train, tiny_run_argv

from pmm_model.run.checkpoint import load_checkpoint
from pmm_model.run.engine import Engine, run_training
from pmm_model.run.folder import RunFolder, RunFolderError, shows_token

REPO = Path(__file__).resolve().parents[2]

# Runs the training CLI's configuration with an Engine that also saves each rank's weights
# (parameters: BatchNorm running statistics are each rank's own until DDP broadcasts rank 0's
# at the next forward; the checkpoint has rank 0's).
RANK_WEIGHTS_SCRIPT = """
import sys
import torch
from pmm_model.cli.train import parse_args
from pmm_model.run.engine import Engine

class SaveRankWeights(Engine):
    def run(self):
        result = super().run()
        weights = {name: p.detach() for name, p in self.model.named_parameters()}
        torch.save(weights, f"{sys.argv[1]}/rank{self.dist.rank}.pt")
        return result

parse_args(sys.argv[2:], SaveRankWeights).run()
"""


def _torchrun(*args, cwd):
    # The subprocesses must import this checkout, whatever the venv's editable install names.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        *args,
    ]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_process_gloo_job_and_resume(tiny_root, tmp_path):
    # 6 ids x 4 images, P=2 x K=4: three global batches, so one step per rank and epoch.
    root = tiny_root
    # A 1-process run, through the plain-Python entry point.
    single = tmp_path / "single"
    result = run_training({**tiny_run_options(root), "output_dir": str(single)})
    assert set(result) == {"rank1", "mAP", "mINP", "wall_seconds"}

    # A 1-process checkpoint continued by 2 processes in a new folder.
    ddp = tmp_path / "ddp"
    script = tmp_path / "save_rank_weights.py"
    script.write_text(RANK_WEIGHTS_SCRIPT)
    _torchrun(
        str(script),
        str(ddp),
        "--resume",
        str(single / "checkpoint.pt"),
        "--epochs",
        "2",
        "--output-dir",
        str(ddp),
        cwd=tmp_path,
    )
    rank0, rank1 = (torch.load(ddp / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and len(rank0) > 50
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name
    checkpoint = load_checkpoint(ddp / "checkpoint.pt")
    assert checkpoint["epoch"] == 2 and len(checkpoint["rng"]) == 2
    for name, tensor in rank0.items():
        assert torch.equal(checkpoint["model"][name], tensor), name
    assert sorted(p.name for p in ddp.iterdir()) == [
        ".lock",
        "checkpoint.pt",
        "metrics.json",
        "rank0.pt",
        "rank1.pt",
        "tensorboard",
        "train.log",
    ]
    # Rank 0 alone writes TensorBoard events: one event file.
    assert len(list((ddp / "tensorboard").glob("events.out.tfevents.*"))) == 1

    # The 2-process checkpoint continued by the CLI under torchrun.
    _torchrun(
        "-m",
        "pmm_model.train",
        "--resume",
        str(ddp / "checkpoint.pt"),
        "--epochs",
        "3",
        cwd=tmp_path,
    )
    assert load_checkpoint(ddp / "checkpoint.pt")["epoch"] == 3
    assert [m["epoch"] for m in json.loads((ddp / "metrics.json").read_text())] == [1, 2, 3]
    log = (ddp / "train.log").read_text()
    # Rank 0 alone logs: one line per epoch, the world size and per-rank batch at each start.
    assert (
        log.count(
            "world size 2: 2 x 4 = 8 images per rank and step, 16 per global batch, "
            "1 steps per epoch"
        )
        == 2
    )
    assert log.count("epoch 2/2: loss") == 1 and log.count("epoch 3/3: loss") == 1
    assert "written by 1 processes, this run has 2" in log


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_sampler_gives_each_rank_distinct_batches_of_one_order():
    from pmm_model.data.sampler import PKSampler

    pids = [i // 5 for i in range(60)]  # 12 ids x 5 images
    whole = list(PKSampler(pids, p=3, images_per_id=2, seed=4))
    ranks = [
        list(PKSampler(pids, p=3, images_per_id=2, seed=4, num_replicas=3, rank=r))
        for r in range(3)
    ]
    assert all(len(r) == len(whole) // 3 for r in ranks)
    assert [b for step in zip(*ranks, strict=True) for b in step] == whole[: len(whole) // 3 * 3]
    with pytest.raises(ValueError, match="cannot be shared by 100 processes"):
        PKSampler(pids, p=3, images_per_id=2, num_replicas=100, rank=0)


# A 2-process job whose ranks misbehave on purpose, through the training CLI.
FAULTY_SCRIPT = """
import os, sys, time
from pathlib import Path
from pmm_model.cli import train
from pmm_model.run.engine import Engine

mode, rank, argv = sys.argv[1], int(os.environ["RANK"]), sys.argv[2:]
if mode == "epochs":
    argv += ["--epochs", str(2 + rank)]

class Faulty(Engine):
    stop_grace = 3.0

    def forward_loss(self, images, pids):
        loss = super().forward_loss(images, pids)
        if mode == "nan" and rank == 1:
            return loss * float("nan")
        if mode == "hang":
            if rank == 0:  # then waits in the step's collective for rank 1, which never comes
                Path(os.environ["PID_FILE"]).write_text(str(os.getpid()))
            else:
                time.sleep(600)
        return loss

train.Engine = Faulty
train.main(argv)
"""


@pytest.fixture(scope="module")
def faulty_job(tiny_root, tmp_path_factory):
    """Starts FAULTY_SCRIPT under torchrun: ``start(mode, out, **env) -> Popen``."""
    base = tmp_path_factory.mktemp("faulty")
    root = tiny_root
    script = base / "faulty.py"
    script.write_text(FAULTY_SCRIPT)

    def start(mode, out, **env):
        argv = [
            "--data", "folder", "--root", str(root), "--output-dir", str(out), "--model",
            "baseline", "--backbone", "resnet18", "--height", "64", "--width", "32",
            "--ids-per-batch", "2", "--images-per-id", "4", "--workers", "0", "--device", "cpu",
        ]  # fmt: skip
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", str(script), mode, *argv,
        ]  # fmt: skip
        environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
        return subprocess.Popen(
            command,
            cwd=base,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start


def _outcome(job, timeout):
    """(exit status, stderr) of a torchrun job; a job that outlives ``timeout`` fails the test."""
    try:
        _, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        _, err = job.communicate()
        pytest.fail(f"the job still ran after {timeout} s (it hangs): {err[-2000:]}")
    return job.returncode, err


@pytest.mark.slow
def test_ranks_with_different_options_fail_at_once(faulty_job, tmp_path):
    # Issue 16.6: --epochs 2 on rank 0 and 3 on rank 1 deadlocked at the end of epoch 2.
    code, err = _outcome(faulty_job("epochs", tmp_path / "run"), timeout=240)
    assert code == 1
    assert "different options (--epochs: 2 on rank 0, 3 on rank 1)" in err, err[-3000:]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_a_nan_loss_names_the_rank_that_saw_it(faulty_job, tmp_path):
    # Issue 16.18: rank 0 reported its own rank for rank 1's NaN.
    code, err = _outcome(faulty_job("nan", tmp_path / "run"), timeout=240)
    assert code == 1
    assert "the loss is not finite (nan) on rank 1 at epoch 1, step 1/1" in err, err[-3000:]


@pytest.mark.slow
def test_a_signal_during_a_hung_collective_still_ends_the_job(faulty_job, tmp_path):
    # Issue 16.6: SIGTERM was ignored while rank 0 waited in a collective for a rank that
    # hangs (the collective timeout is 2 h); now rank 0 exits stop_grace (3 s) after it.
    pid_file = tmp_path / "rank0.pid"
    job = faulty_job("hang", tmp_path / "run", PID_FILE=str(pid_file))
    for _ in range(2400):
        if (pid_file.exists() and pid_file.read_text()) or job.poll() is not None:
            break
        time.sleep(0.1)
    time.sleep(2)  # into the collective
    if pid_file.exists():
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
    code, err = _outcome(job, timeout=120)
    assert code != 0
    assert "SIGTERM: the run did not stop within 3 s" in err, err[-3000:]


@pytest.mark.slow
def test_resume_auto_at_another_world_size_continues_and_says_it_is_not_exact(
    tiny_root, tmp_path, monkeypatch
):
    # Issue 26.6: an elastic restart (torchrun --nnodes 1:2, a node joined) reruns the same
    # --resume auto command at another world size. 3 global batches an epoch: 3 steps at one
    # process, 1 step of 2 batches at two (the third is dropped).
    out = tmp_path / "run"
    argv = [
        "--data", "folder", "--root", str(tiny_root), "--output-dir", str(out),
        "--backbone", "resnet18", "--height", "64", "--width", "32", "--ids-per-batch", "2",
        "--images-per-id", "4", "--block-size", "1", "1", "--workers", "0", "--device", "cpu",
        "--epochs", "2", "--eval-every", "1", "--no-tensorboard", "--resume", "auto",
    ]  # fmt: skip
    real, calls = Engine.forward_loss, []

    def forward_then_stop(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "forward_loss", forward_then_stop)
    assert run_train(argv)[0] == 128 + signal.SIGTERM  # one process, stopped mid-epoch 1
    monkeypatch.undo()
    stopped = load_checkpoint(out / "checkpoint.pt")
    assert (stopped["epoch"], stopped["batches"], len(stopped["rng"])) == (0, 2, 1)

    # Every step's time exceeds 1e-9 minutes: the ranks agree on a step checkpoint each step.
    _torchrun("-m", "pmm_model.train", *argv, "--checkpoint-every-minutes", "1e-9", cwd=tmp_path)
    finished = load_checkpoint(out / "checkpoint.pt")
    assert (finished["epoch"], len(finished["rng"])) == (2, 2)
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1, 2]
    log = (out / "train.log").read_text()
    assert f"continuing the run in {out} from its checkpoint" in log
    assert (
        "the checkpoint was written by 1 processes, this run has 2: it continues, but not "
        "bit-identically to an unchanged run" in log
    )
    # Two processes' epoch ends before the checkpoint's third batch: the next epoch follows.
    assert (
        "the 2 global batches done cover epoch 1 at 2 processes (1 steps each, the other "
        "batches dropped): continuing with epoch 2" in log
    )


# The training CLI, whose rank 1 SIGKILLs itself in the 2nd step of epoch 2 unless the marker
# file (argv[1]) exists, which it writes first: so only the first launch is killed.
KILL_RANK1_SCRIPT = """
import os
import signal
import sys
from pathlib import Path

from pmm_model.cli import train
from pmm_model.run.engine import Engine

marker, real, calls = Path(sys.argv[1]), Engine.forward_loss, []

def forward_loss(self, *args, **kwargs):
    if self.dist.rank == 1 and self.sampler.epoch == 1:
        calls.append(1)
        if len(calls) == 2 and not marker.exists():
            marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kwargs)

Engine.forward_loss = forward_loss
train.main(sys.argv[2:])
"""


@pytest.mark.slow
def test_a_killed_rank_is_relaunched_by_torchrun_and_the_job_ends_as_if_not(tiny_root, tmp_path):
    # Issue 26.1: torchrun --max-restarts 1 relaunches the same command after rank 1 dies; with
    # --resume auto it continues the step checkpoint written just before, bit-exactly.
    # P=2 x K=2 on 6 ids x 4 images: 2 or 3 steps per rank and epoch.
    script = tmp_path / "kill_rank1.py"
    script.write_text(KILL_RANK1_SCRIPT)

    def job(out, marker):
        return _torchrun(
            "--max-restarts", "1", str(script), str(marker),
            "--data", "folder", "--root", str(tiny_root), "--output-dir", str(out),
            "--backbone", "resnet18", "--height", "64", "--width", "32", "--ids-per-batch", "2",
            "--images-per-id", "2", "--block-size", "1", "1", "--workers", "0",
            "--device", "cpu", "--epochs", "2", "--eval-every", "2", "--no-tensorboard",
            "--checkpoint-every-steps", "1", "--resume", "auto",
            cwd=tmp_path,
        )  # fmt: skip

    marker = tmp_path / "killed"
    job(tmp_path / "unkilled", tmp_path)  # the marker path exists (a folder): no kill
    job(tmp_path / "killed-run", marker)
    assert marker.read_text() == "killed"
    log = (tmp_path / "killed-run" / "train.log").read_text()
    assert log.count("no checkpoint in") == 1  # the first launch started the run
    assert "continuing the run in" in log  # the relaunch continued it,
    assert "after epoch 1, global batch 2" in log  # from epoch 2's first step (2 batches)
    finished = load_checkpoint(tmp_path / "killed-run" / "checkpoint.pt")
    expected = load_checkpoint(tmp_path / "unkilled" / "checkpoint.pt")
    assert finished["epoch"] == expected["epoch"] == 2
    for name, tensor in expected["model"].items():
        assert torch.equal(finished["model"][name], tensor), name


def _two_nodes(root, out0, out1, *extra, cwd, cwd1=None):
    """Two torchrun launchers, as two nodes of one process each (c10d rendezvous on
    127.0.0.1), running the tiny run on ``root`` into ``out0`` and ``out1`` from ``cwd`` (the
    second from ``cwd1`` if given): each launcher's ``(status, stdout, stderr)``. A launcher
    that outlives 120 s fails the test."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launchers = []
    for node, out in enumerate((out0, out1)):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
            "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--rdzv-id", "two-nodes", "--rdzv-conf", f"is_host={int(node == 0)}",
            "-m", "pmm_model.train", *tiny_run_argv(root, out, *extra),
        ]  # fmt: skip
        launchers.append(
            subprocess.Popen(
                command,
                cwd=cwd1 if node and cwd1 else cwd,
                env=env,
                stdout=PIPE,
                stderr=PIPE,
                text=True,
            )
        )
    outcomes = []
    for launcher in launchers:
        try:
            out, err = launcher.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for each in launchers:
                each.kill()
            pytest.fail(f"a launcher still ran after 120 s (it hangs): {launcher.args}")
        outcomes.append((launcher.returncode, out, err))
    return outcomes


@pytest.mark.slow
def test_two_nodes_train_evaluate_and_resume_into_one_shared_folder(tiny_root, tmp_path):
    # Issue 26.2: two launchers (--nnodes 2 --nproc-per-node 1): both processes have local
    # rank 0, global ranks 0 and 1; only global rank 0 writes and logs.
    out = tmp_path / "run"
    first = _two_nodes(tiny_root, out, out, "--resume", "auto", cwd=tmp_path)
    assert [code for code, _, _ in first] == [0, 0], first[0][2][-3000:] + first[1][2][-3000:]
    # One launcher shows rank 0's log; the other's process logs nothing.
    assert sorted("epoch 1/1: loss" in stdout for _, stdout, _ in first) == [False, True]
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    events = out / "tensorboard"
    assert len(list(events.glob("events.out.tfevents.*"))) == 1  # one writer: rank 0

    # The second node sees the shared folder under another path (mounted elsewhere).
    mount = tmp_path / "mount"
    mount.symlink_to(out, target_is_directory=True)
    second = _two_nodes(tiny_root, out, mount, "--resume", "auto", "--epochs", "2", cwd=tmp_path)
    assert [code for code, _, _ in second] == [0, 0], second[0][2][-3000:]
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert (checkpoint["epoch"], len(checkpoint["rng"])) == (2, 2)
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1, 2]
    log = (out / "train.log").read_text()
    assert log.count("no checkpoint in") == 1 and log.count("continuing the run in") == 1
    assert log.count("epoch 1/1: loss") == 1 and log.count("epoch 2/2: loss") == 1
    assert log.count("world size 2:") == 2
    # One set of run files (no token left), one TensorBoard writer per job.
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "checkpoint.pt", "metrics.json", "tensorboard", "train.log",
    ]  # fmt: skip
    assert len(list(events.glob("events.out.tfevents.*"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("paths", ["different", "same"])
def test_two_nodes_without_a_shared_folder_fail_on_both_in_one_line(tiny_root, tmp_path, paths):
    # Issue 26.2: nodes that do not share the output folder are refused at start on every
    # node, before anything is written. Simulated on one machine by two folders: two
    # --output-dir values, or one relative --output-dir in two working directories (the same
    # path on two nodes, which an agreement check on the options cannot tell apart).
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    tic = time.perf_counter()
    if paths == "different":
        outs = [node / "run" for node in nodes]
        outcomes = _two_nodes(tiny_root, *outs, cwd=tmp_path)
    else:
        outs = [Path("run"), Path("run")]
        outcomes = _two_nodes(tiny_root, *outs, cwd=nodes[0], cwd1=nodes[1])
    assert time.perf_counter() - tic < 60  # no hang: both fail at start
    for (code, _, err), out in zip(outcomes, outs, strict=True):
        assert code == 1, err[-3000:]
        lines = [line for line in err.splitlines() if "error: " in line]
        assert lines == [
            f"python -m pmm_model.train: error: output folder {str(out)!r} is not one folder "
            "shared by every process: rank 1 cannot read the file rank 0 wrote into its "
            "--output-dir; give every node the same --output-dir on a shared file system"
        ], err[-3000:]
    assert [list(node.iterdir()) for node in nodes] == [[], []]


def test_the_shared_folder_token_is_seen_in_its_folder_only_and_never_left(tmp_path):
    # Issue 26.2, the check's parts: a token reads back through its folder (here by another
    # path to it), not through another folder; a token a killed check left is removed when
    # the folder is next claimed.
    (tmp_path / "other").mkdir()
    with RunFolder(tmp_path / "run") as folder:
        token = folder.write_token()
        assert shows_token(tmp_path / "other" / ".." / "run", token)
        assert not shows_token(tmp_path / "other", token)
        assert not shows_token(tmp_path / "missing", token)
        folder.remove_token(token)
        assert not shows_token(tmp_path / "run", token)
        left = folder.write_token()  # then the check is killed
    assert [p.name for p in (tmp_path / "run").glob(".shared-*")] == [f".shared-{left}"]
    with RunFolder(tmp_path / "run"):
        assert list((tmp_path / "run").glob(".shared-*")) == []
    error = RunFolderError("not_shared", tmp_path / "run", reason="ranks 1, 2")
    assert str(error) == (
        f"output folder {str(tmp_path / 'run')!r} is not one folder shared by every process: "
        "ranks 1, 2 cannot read the file rank 0 wrote into its output_dir; give every node the "
        "same output_dir on a shared file system"
    )
