"""One command for a CUDA machine: the Triton tests compiled on the GPU, then the op's rows.

    PYTHONPATH=. python benchmarks/gpu_check.py --out RESULTS_DIR      # or: make gpu-check

Needs torch, triton, pytest and hypothesis already installed (no network, no install); about
5-8 minutes on one H100. Writes to RESULTS_DIR (default ``$PMM_GPU_RESULTS`` or
``gpu-results``):

* ``tests.txt``: ``pytest tests/kernels/test_triton_kernels.py
  tests/kernels/test_gpu_static.py tests/kernels/test_gpu.py``, the kernels compiled and run on
  the GPU against the PyTorch path on CPU, the static check and the tests marked ``gpu``;
* ``op_rows.json`` and ``op_rows.md``: at the paper's map (C=2048, 24x8, k=3 blocks of 3x2) for
  N in {64, 256}, float32 and bfloat16, both attn forms, forward, forward+backward and backward
  alone (Triton and eager only): the ``clone()`` floor, the Triton kernels, eager PyTorch,
  ``torch.compile(dynamic=True)`` of the PyTorch path and the authors' op (float32 only).
  Times are ``triton.testing.do_bench`` medians (CUDA events, L2 flushed before each run); GB/s
  is over the bytes the op must move (docs/performance.md#bytes-per-pass); ``x clone`` is the time
  over one ``feat.clone()`` (which moves 2 B), so a forward+backward at the floor would read 2.0.
  Then the layer's rows on ViT-B/16 ReID tokens (N=64, 1+128 tokens, C=768), against ``clone()``
  of the token tensor; then a bf16 training step of timm's resnet50 and vit_small at 256x128
  with and without the inserted layer (``benchmarks/step_rows.py``; there ``x clone`` is the
  step's time over the step without the layer, and needs timm).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (64, 256)
DTYPES = (torch.float32, torch.bfloat16)
PASSES = ("forward", "forward_backward", "backward")
IMPLS = ("triton", "torch", "torch_compile", "authors")


def driver_version() -> str:
    """The NVIDIA driver's version as nvidia-smi reports it, or why it could not be read."""
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({type(error).__name__})"
    return result.stdout.strip() or f"unknown (nvidia-smi exit {result.returncode})"


def run_tests(out: Path, timeout_s: int) -> dict:
    """The kernels' tests, compiled (conftest leaves TRITON_INTERPRET unset on a GPU machine)."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/kernels/test_triton_kernels.py",
        "tests/kernels/test_gpu_static.py",
        "tests/kernels/test_gpu.py",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
        output, returncode = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as error:
        partial = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout
        output = f"{partial or ''}\n... stopped after {timeout_s} s"
        returncode = None
    (out / "tests.txt").write_text(output)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return {
        "command": " ".join(command[1:]),
        "returncode": returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": lines[-1] if lines else "",
    }


def time_rows(rows: list[dict], save: Callable[[], None], deadline: float) -> None:
    """Every op row, timed with do_bench, appended to ``rows`` and saved as it comes; a row that
    fails records its error and the rest go on; past ``deadline`` (perf_counter) no row starts."""
    from triton.testing import do_bench

    from benchmarks.op_rows import make_call, make_inputs, op_bytes
    from pmm_kernels.ops.feature_mix_triton import chosen_configs
    from pmm_kernels.testing.cases import ATTN_FORMS

    def median_ms(fn) -> float:
        return do_bench(fn, return_mode="median")

    # One torch.compile graph per dtype, attn form and grad mode (N is symbolic): 8 in all.
    torch._dynamo.config.recompile_limit = 64
    for dtype in DTYPES:
        for n in BATCHES:
            feat, *_ = make_inputs(n, dtype, "map")
            feat_bytes = feat.numel() * feat.element_size()
            floor = median_ms(feat.clone)
            rows.append(
                dict(
                    n=n,
                    dtype=str(dtype)[6:],
                    attn="-",
                    passes="copy",
                    impl="clone",
                    ms=floor,
                    gb_per_s=2 * feat_bytes / floor / 1e6,
                    x_clone=1.0,
                )
            )
            del feat
            for attn_form in ATTN_FORMS:
                feat, attn, labels, partners = make_inputs(n, dtype, attn_form)
                for passes in PASSES:
                    for impl in IMPLS:
                        if impl == "authors" and dtype != torch.float32:
                            continue  # the authors' op builds a float32 mask
                        if passes == "backward" and impl not in ("triton", "torch"):
                            continue
                        row = dict(
                            n=n, dtype=str(dtype)[6:], attn=attn_form, passes=passes, impl=impl
                        )
                        if time.perf_counter() > deadline:
                            row["error"] = "skipped: past --deadline-s"
                            rows.append(row)
                            continue
                        try:
                            call = make_call(impl, feat, attn, labels, partners, passes)
                            ms = median_ms(call)
                            bytes_moved = op_bytes(feat, attn_form, passes)
                            row.update(ms=ms, gb_per_s=bytes_moved / ms / 1e6, x_clone=ms / floor)
                            if impl == "triton":
                                row["config"] = chosen_configs()
                            del call
                        except Exception as error:  # recorded in the table, not fatal
                            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
                        rows.append(row)
                        save()
                        print(json.dumps(row), flush=True)
                del feat, attn, labels, partners
                torch.cuda.empty_cache()


def time_token_rows(rows: list[dict], save: Callable[[], None]) -> None:
    """The layer on ViT-B/16 ReID tokens (benchmarks/test_tokens_bench.py's rows), float32."""
    from triton.testing import do_bench

    from benchmarks.token_rows import SALIENCIES, token_call

    for saliency, passes in itertools.product(SALIENCIES, ("forward", "forward_backward")):
        attn = "tokens" if saliency == "token_norm" else "tokens, saliency given"
        row = dict(n=64, dtype="float32", attn=attn, passes=passes, impl="layer")
        try:
            tokens, call = token_call(passes, saliency)
            floor = do_bench(tokens.clone, return_mode="median")
            ms = do_bench(call, return_mode="median")
            token_bytes = tokens.numel() * tokens.element_size()
            row.update(ms=ms, gb_per_s=2 * token_bytes / ms / 1e6, x_clone=ms / floor)
        except Exception as error:  # recorded in the table, not fatal
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        rows.append(row)
        save()
        print(json.dumps(row), flush=True)


def time_step_rows(rows: list[dict], save: Callable[[], None]) -> None:
    """A training step of timm nets with and without the layer (benchmarks/step_rows.py);
    ``x_clone`` holds the step's time over the same step without the layer."""
    from triton.testing import do_bench

    from benchmarks.step_rows import NETS, N, step_call

    for net in NETS:
        bare_ms = None
        for with_layer in (False, True):
            impl = "step+layer" if with_layer else "step"
            row = dict(n=N, dtype="bf16 autocast", attn=net, passes="train_step", impl=impl)
            try:
                ms = do_bench(step_call(net, with_layer), warmup=200, rep=1000)
                bare_ms = bare_ms or ms
                row.update(ms=ms, gb_per_s=0.0, x_clone=ms / bare_ms)
            except Exception as error:  # recorded in the table, not fatal
                row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
            rows.append(row)
            save()
            print(json.dumps(row), flush=True)


def markdown(rows: list[dict], device: str) -> str:
    lines = [
        f"Op rows on {device} (ms: do_bench median; x clone: over one feat.clone()).",
        "",
        "| N | dtype | attn | passes | impl | ms | GB/s | x clone |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['n']} | {r['dtype']} | {r['attn']} | {r['passes']} | "
                f"{r['impl']} | failed: {r['error'][:80]} | | |"
            )
        else:
            lines.append(
                f"| {r['n']} | {r['dtype']} | {r['attn']} | {r['passes']} | "
                f"{r['impl']} | {r['ms']:.3f} | {r['gb_per_s']:.0f} | "
                f"{r['x_clone']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        default=os.environ.get("PMM_GPU_RESULTS", "gpu-results"),
        help="results folder (default: $PMM_GPU_RESULTS or gpu-results)",
    )
    parser.add_argument(
        "--tests-timeout",
        type=int,
        default=270,
        help="seconds the tests may take before the rows start anyway",
    )
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="seconds from the start after which no further op row starts (the token rows "
        "still run); the skipped rows say so in the table",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA device; none is visible")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import triton

    start = time.perf_counter()
    deadline = start + args.deadline_s if args.deadline_s else float("inf")
    device = torch.cuda.get_device_name()
    report = {
        "device": device,
        "driver": driver_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "python": platform.python_version(),
    }
    if not args.skip_tests:
        report["tests"] = run_tests(out, args.tests_timeout)
        print("tests:", report["tests"], flush=True)
    rows_start = time.perf_counter()
    rows: list[dict] = []
    report["rows"] = rows

    def save() -> None:
        # Written after every row, so a run stopped at its time limit still leaves its table.
        report["rows_seconds"] = round(time.perf_counter() - rows_start, 1)
        (out / "op_rows.json").write_text(json.dumps(report, indent=1))
        (out / "op_rows.md").write_text(markdown(rows, device))

    time_rows(rows, save, deadline)
    time_token_rows(rows, save)
    time_step_rows(rows, save)
    save()
    print(markdown(rows, device))
    tests_ok = args.skip_tests or report["tests"]["returncode"] == 0
    rows_ok = not any("error" in row for row in report["rows"])
    return 0 if tests_ok and rows_ok else 1


if __name__ == "__main__":
    sys.exit(main())
