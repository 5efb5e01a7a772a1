"""Where the op's time goes on a CUDA machine: host-side launches and syncs, per kernel.

    PYTHONPATH=. python benchmarks/gpu_profile.py --out RESULTS_DIR

Writes ``profile.txt``: for the Triton op at the paper's map (N in {64, 256}, float32, map
attn) and the layer on ViT-B/16 tokens, the torch.profiler table of one forward and one
forward+backward (after warm-up), the number of kernels launched per call, the wall time per
call with and without a device sync after each, and every host-device sync that
``torch.cuda.set_sync_debug_mode`` reports.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.op_rows import make_call, make_inputs
from benchmarks.token_rows import token_call


def wall_ms(call: Callable[[], object], repeats: int, sync_each: bool) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
        if sync_each:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def describe(name: str, call: Callable[[], object]) -> str:
    for _ in range(5):  # compile and autotune outside the profile
        call()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        call()
        torch.cuda.set_sync_debug_mode("default")
    syncs = sorted({str(w.message).splitlines()[0] for w in caught if "sync" in str(w.message)})
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=30)
    return "\n".join(
        [
            f"## {name}",
            f"wall ms/call, no sync between calls: {wall_ms(call, 50, False):.3f}",
            f"wall ms/call, sync after each call: {wall_ms(call, 50, True):.3f}",
            f"device kernels in one call: {len(kernels)}",
            f"host-device syncs reported in one call: {len(caught)}",
            *[f"  {line}" for line in syncs],
            table,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-results")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for n in (64, 256):
        feat, attn, labels, partners = make_inputs(n, torch.float32, "map")
        for passes in ("forward", "forward_backward"):
            call = make_call("triton", feat, attn, labels, partners, passes)
            sections.append(describe(f"triton op, N={n}, float32, map attn, {passes}", call))
    for passes in ("forward", "forward_backward"):
        _, call = token_call(passes)
        sections.append(describe(f"layer on ViT-B/16 tokens, N=64, {passes}", call))
    (out / "profile.txt").write_text("\n".join(sections))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
