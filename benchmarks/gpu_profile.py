"""Where the op's time goes on a CUDA machine: host-side launches and syncs, per kernel.

    PYTHONPATH=. python benchmarks/gpu_profile.py --out RESULTS_DIR

Writes ``profile.txt``: for the Triton op at the paper's map (N in {64, 256}, float32, map
attn) and the layer on ViT-B/16 tokens, the torch.profiler table of one forward and one
forward+backward (after warm-up), the number of kernels launched per call, the wall time per
call with and without a device sync after each, and every host-device sync that
``torch.cuda.set_sync_debug_mode`` reports. With ``--steps``, ``step_profile.txt`` instead: the
training steps of ``step_rows.py`` at N in {64, 256}, each with wall and summed kernel time, the
kernel count and where each host-device sync happens.
"""

from __future__ import annotations

import argparse
import time
import traceback
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
    # The first use of the debug mode also warns that it is a prototype: not a sync.
    caught = [w for w in caught if "prototype" not in str(w.message)]
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


def sync_sites(call: Callable[[], object]) -> str:
    """Every host-device sync of one call, each as its chain of pmm_kernels frames, or "no sync"."""
    sites: list[str] = []

    def record(*_args: object, **_kwargs: object) -> None:
        frames = [
            f"{frame.filename.split('pmm_kernels/')[-1]}:{frame.lineno}"
            for frame in traceback.extract_stack()
            if "/pmm_kernels/" in frame.filename
        ]
        sites.append(" > ".join(frames) or "outside pmm_kernels")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return "; ".join(f"sync at {site}" for site in sites) or "no sync"


def describe_step(name: str, call: Callable[[], object]) -> str:
    """A training step: wall and device time, kernels, and where it syncs."""
    for _ in range(5):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    device_ms = sum(e.device_time for e in kernels) / 1e3
    return (
        f"## {name}: wall {wall_ms(call, 20, True):.2f} ms/step, device (kernels summed) "
        f"{device_ms:.2f} ms, {len(kernels)} kernels; {sync_sites(call)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-results")
    parser.add_argument("--steps", action="store_true", help="profile the training steps only")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.steps:
        from benchmarks import step_rows

        lines = []
        for n in (64, 256):
            step_rows.N = n
            for net in step_rows.NETS:
                for with_layer in (False, True):
                    call = step_rows.step_call(net, with_layer)
                    label = f"{net}, N={n}, {'with' if with_layer else 'without'} the layer"
                    lines.append(describe_step(label, call))
                    print(lines[-1], flush=True)
        (out / "step_profile.txt").write_text("\n".join(lines) + "\n")
        return
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
