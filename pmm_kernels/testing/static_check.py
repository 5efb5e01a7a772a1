"""Static GPU check: compile every Triton launch of the feature-mix op for real GPUs, without one.

The interpreter says nothing about what a GPU would execute; Triton's compiler, however, runs on
any machine. For each target (sm_80 = A100, sm_90 = H100) this module

1. records the launches that ``pmm_kernels.ops.feature_mix_triton``'s launchers make, by calling
   them on CPU tensors with every kernel replaced by a recorder (nothing runs): every call of
   :data:`pmm_kernels.testing.cases.CALLS` (all modes, both attn forms, given partners, random
   keys, Batch DropBlock's rectangle, every partner rule) and the backward, for float32,
   bfloat16 and float16, contiguous (NCHW) and channels_last, on the maps of
   :data:`~pmm_kernels.testing.cases.COMPILED` (the paper's 24x8 map and an odd 7x5 map with
   C=64, and 7x5 with C=130), plus the planning kernel on
   :data:`~pmm_kernels.testing.cases.CHUNKED_LABELS` (N=1100: labels read in several chunks);
2. compiles each launch with the JIT's own specialization (``JITFunction.warmup``, never launched)
   for ``GPUTarget("cuda", cap, 32)`` behind a stand-in driver, once per config the autotuner may
   pick for it;
3. reads registers and local memory (spills) from ``cuobjdump -res-usage`` on the cubin, counts
   the global loads and stores in the PTX and how many are 16 bytes wide, and models the bytes
   the launch moves (as a multiple of B = bytes(feat)).

A problem is: a launch that doesn't compile, local memory, more than ``MAX_REGISTERS`` registers
per thread, or a streaming kernel whose dense tiles (see ``DENSE_STREAMS``) are not moved in
16-byte accesses where the layout allows it (NCHW needs H*W, channels_last C to be a multiple
of 16: the launcher's own ``streams_16_byte_aligned``).

It relies on these Triton internals (3.x), checked by :func:`unavailable` first:
``triton.backends.compiler.GPUTarget``, ``triton.runtime.driver.set_active``,
``JITFunction.warmup`` returning a kernel whose ``asm`` holds "ptx" and "cubin",
``Autotuner.fn/.configs/.early_config_prune``, ``Config.all_kwargs`` and the ``cuobjdump`` and
``ptxas`` that the triton wheel ships under ``triton/backends/nvidia/bin``. Checked with
triton 3.8.0; 3.6.0 gave the same verdict on every launch of an earlier, smaller case table.

Usage::

    python -m pmm_kernels.testing.static_check [--cap 80 90] [--max-registers 96] [--json PATH]

Exit status 0 when every launch passes, 1 on problems, 2 when the check can't run here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pmm_kernels.testing import cases
from pmm_kernels.testing.compiled_code import (
    StandInDriver,
    global_accesses,
    resource_usage,
    triton_bin,
)

CAPS = (80, 90)
MAX_REGISTERS = 96
# Where the kernels are: the planning kernels, then the copy kernels and the launchers.
KERNEL_MODULES = ("pmm_kernels.ops.plan_triton", "pmm_kernels.ops.feature_mix_triton")
# The layouts of the case table (a strided map has no dense stream to vectorise).
LAYOUTS = cases.MAP_LAYOUTS
# Dense tiles per program of each kernel that streams the map: (loads, stores). Each must move
# its tile in 16-byte accesses. The partner's and takers' reads are sparse (replaced cells only).
DENSE_STREAMS = {
    "_saliency_copy_kernel": (1, 1),
    "_mix_kernel": (1, 1),
    "_feature_mix_bwd_kernel": (1, 1),
}


@dataclass
class Launch:
    """One recorded kernel launch and the case that made it."""

    kernel: str
    args: tuple
    kwargs: dict
    dtype: str
    layout: str
    map: str
    mode: str
    aligned: bool
    bytes_over_feat: float


@dataclass
class Row:
    """What the compiler made of one launch for one target and config."""

    cap: int
    kernel: str
    dtype: str
    layout: str
    map: str
    mode: str
    config: str
    bytes_over_feat: float
    aligned: bool
    registers: int | None = None
    local_bytes: int | None = None
    loads: int = 0
    loads_16b: int = 0
    stores: int = 0
    stores_16b: int = 0
    tile_bytes_per_thread: int | None = None
    error: str | None = None


def unavailable() -> str | None:
    """Why the check can't run with this Triton, or None."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.runtime import driver
        from triton.runtime.autotuner import Autotuner, Config
        from triton.runtime.jit import JITFunction
    except ImportError as error:
        return f"triton's compiler API is missing: {error}"
    missing = [
        name
        for name, ok in (
            ("driver.set_active", hasattr(driver, "set_active")),
            ("JITFunction.warmup", hasattr(JITFunction, "warmup")),
            ("Config.all_kwargs", hasattr(Config, "all_kwargs")),
        )
        if not ok
    ]
    tuned = [
        obj
        for name in KERNEL_MODULES
        for obj in vars(importlib.import_module(name)).values()
        if isinstance(obj, Autotuner)
    ]
    missing += [
        f"Autotuner.{name}"
        for name in ("fn", "configs", "early_config_prune", "arg_names")
        if tuned and not hasattr(tuned[0], name)
    ]
    if missing:
        return f"triton {triton.__version__} lacks {', '.join(missing)}"
    for tool in ("cuobjdump", "ptxas"):
        if not os.access(triton_bin(tool), os.X_OK):
            return f"the triton wheel ships no {tool} at {triton_bin(tool)}"
    return None


def dtype_name(dtype: torch.dtype) -> str:
    """How rows name a dtype: "float32" for ``torch.float32``."""
    return str(dtype).removeprefix("torch.")


def _make_feat(dtype: torch.dtype, layout: str, shape: cases.Shape) -> torch.Tensor:
    return cases.in_layout(torch.zeros(shape.n, shape.c, shape.h, shape.w, dtype=dtype), layout)


def _output_for(feat: torch.Tensor, layout: str) -> torch.Tensor | None:
    """Where the launchers write: the patch view of new output tokens for token maps (as the
    op passes it), else None (the launchers allocate in feat's format)."""
    return cases.in_layout(torch.zeros_like(feat), layout) if layout == "tokens" else None


def chunked_mode() -> str:
    """How rows name the planning kernel's launch on the batch of several label chunks."""
    return f"{cases.CHUNKED_CALL.name}, N={cases.CHUNKED_LABELS.n}"


def _bytes_model(kernel: str, f: float, launch_args: tuple, feat_bytes: int) -> float:
    """Bytes a launch moves over bytes(feat); f = replaced fraction of the map (upper bound)."""
    if kernel == "_saliency_copy_kernel":
        return 2 + launch_args[3].numel() * 4 / feat_bytes  # + float32 partials
    if kernel == "_patch_kernel":
        return 2 * f
    if kernel in ("_mix_kernel", "_feature_mix_bwd_kernel"):
        return 2 + f
    return (
        sum(a.numel() * a.element_size() for a in launch_args[:9] if hasattr(a, "numel"))
        / feat_bytes
    )  # plan: its inputs and outputs at most


def record_launches() -> list[Launch]:
    """Every launch the launchers make over the check's cases; nothing runs."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from pmm_kernels.ops.triton_launch import streams_16_byte_aligned

    module = importlib.import_module(KERNEL_MODULES[-1])
    kernels = {
        (home, name): obj
        for home in map(importlib.import_module, KERNEL_MODULES)
        for name, obj in vars(home).items()
        if isinstance(obj, JITFunction | Autotuner)
    }
    launches: list[Launch] = []
    case: dict = {}
    generator = torch.Generator().manual_seed(0)

    def forward(
        call: cases.Call,
        shape: cases.Shape,
        feat: torch.Tensor,
        dtype: torch.dtype,
        layout: str,
        mode: str,
    ) -> None:
        cut = call.cut(shape)
        case.update(
            feat=feat,
            dtype=dtype_name(dtype),
            layout=layout,
            map=shape.name,
            mode=mode,
            f=cut.replaced_fraction,
        )
        module.feature_mix_forward_triton(
            feat,
            cases.launcher_plan(
                call.source,
                call.partner_rule,
                call.given,
                feat,
                cut.block_size,
                cut.num_blocks,
                generator,
            ),
            _output_for(feat, layout),
        )

    class Recorder:
        def __init__(self, name: str):
            self.name = name

        def __getitem__(self, grid: object) -> Callable[..., None]:
            def record(*args: Any, **kwargs: Any) -> None:
                feat_bytes = case["feat"].numel() * case["feat"].element_size()
                launches.append(
                    Launch(
                        kernel=self.name,
                        args=args,
                        kwargs=kwargs,
                        dtype=case["dtype"],
                        layout=case["layout"],
                        map=case["map"],
                        mode=case["mode"],
                        aligned=streams_16_byte_aligned(*case["feat"].flatten(2).stride()),
                        bytes_over_feat=round(
                            _bytes_model(self.name, case["f"], args, feat_bytes), 4
                        ),
                    )
                )

            return record

    try:
        for home, name in kernels:
            setattr(home, name, Recorder(name))
        for dtype in cases.DTYPES:
            for layout in LAYOUTS:
                for shape in cases.COMPILED:
                    feat = _make_feat(dtype, layout, shape)
                    for call in cases.CALLS:
                        forward(call, shape, feat, dtype, layout, call.name)
                    case.update(mode="backward", f=shape.replaced_fraction)
                    mask = torch.rand(shape.n, shape.h, shape.w, generator=generator) < 0.1
                    module.feature_mix_backward_triton(
                        feat, torch.arange(shape.n).roll(1), mask, _output_for(feat, layout)
                    )
        shape, call = cases.CHUNKED_LABELS, cases.CHUNKED_CALL
        feat = _make_feat(torch.float32, "contiguous", shape)
        forward(call, shape, feat, torch.float32, "contiguous", chunked_mode())
    finally:
        for (home, name), kernel in kernels.items():
            setattr(home, name, kernel)
    return launches


def _describe(kwargs: dict) -> str:
    keys = ("BLOCK_C", "BLOCK_HW", "BLOCK_Q", "BLOCK_P", "num_warps")
    return " ".join(f"{k}={kwargs[k]}" for k in keys if k in kwargs)


def compile_for(cap: int) -> list[dict]:
    """Record the launches and compile each for ``sm_<cap>``: one row per distinct kernel."""
    from triton.runtime import driver
    from triton.runtime.autotuner import Autotuner

    driver.set_active(StandInDriver(cap))
    launches = record_launches()
    kernels = {
        name: obj
        for home in map(importlib.import_module, KERNEL_MODULES)
        for name, obj in vars(home).items()
        if name.endswith("_kernel")
    }
    rows, seen = [], set()
    for launch in launches:
        kernel = kernels[launch.kernel]
        if isinstance(kernel, Autotuner):
            named = dict(zip(kernel.arg_names, launch.args, strict=False))
            configs = (
                kernel.early_config_prune(kernel.configs, named)
                if kernel.early_config_prune
                else kernel.configs
            )
            variants = [(kernel.fn, {**launch.kwargs, **config.all_kwargs()}) for config in configs]
        else:
            variants = [(kernel, dict(launch.kwargs))]
        for jit, kwargs in variants:
            kwargs.setdefault("num_warps", 4)
            row = Row(
                cap,
                launch.kernel,
                launch.dtype,
                launch.layout,
                launch.map,
                launch.mode,
                _describe(kwargs),
                launch.bytes_over_feat,
                launch.aligned,
            )
            try:
                compiled = jit.warmup(*launch.args, grid=(1,), **kwargs)
            except Exception as error:  # a failed compile is a finding, reported with the rest
                row.error = f"{type(error).__name__}: {str(error)[-300:]}"
                rows.append(asdict(row))
                continue
            key = (launch.kernel, launch.dtype, launch.layout, launch.map, compiled.hash)
            if key in seen:
                continue
            seen.add(key)
            row.registers, row.local_bytes = resource_usage(compiled.asm["cubin"])
            row.loads, row.loads_16b = global_accesses(compiled.asm["ptx"], "ld")
            row.stores, row.stores_16b = global_accesses(compiled.asm["ptx"], "st")
            if launch.kernel in DENSE_STREAMS:
                element_size = launch.args[0].element_size()
                threads = 32 * kwargs["num_warps"]
                row.tile_bytes_per_thread = (
                    kwargs["BLOCK_C"] * kwargs["BLOCK_HW"] * element_size // threads
                )
            rows.append(asdict(row))
    return rows


def row_problems(row: dict, max_registers: int = MAX_REGISTERS) -> list[tuple[str, str]]:
    """(kind, message) for each way a row misses the bar; kinds: compile, local, registers,
    loads_16b, stores_16b."""
    where = (
        f"{row['kernel']} sm_{row['cap']} {row['dtype']} {row['layout']} {row['map']} "
        f"({row['mode']}; {row['config']})"
    )
    if row["error"]:
        return [("compile", f"{where}: {row['error']}")]
    problems = []
    if row["local_bytes"] is None or row["local_bytes"] > 0:
        problems.append(("local", f"{where}: {row['local_bytes']} bytes of local memory"))
    if row["registers"] is None or row["registers"] > max_registers:
        problems.append(("registers", f"{where}: {row['registers']} registers > {max_registers}"))
    if row["kernel"] in DENSE_STREAMS and row["aligned"]:
        dense_loads, dense_stores = DENSE_STREAMS[row["kernel"]]
        for kind, count, tiles in (
            ("loads_16b", row["loads_16b"], dense_loads),
            ("stores_16b", row["stores_16b"], dense_stores),
        ):
            if 16 * count < tiles * row["tile_bytes_per_thread"]:
                problems.append(
                    (
                        kind,
                        (
                            f"{where}: {count} 16-byte {kind[:-4]} move less than the "
                            f"{tiles} x {row['tile_bytes_per_thread']} dense bytes per thread"
                        ),
                    )
                )
    return problems


def format_table(rows: list[dict]) -> str:
    """One markdown line per compiled kernel."""
    lines = [
        "| sm | kernel | dtype | layout | map | mode (first) | config | regs | local | "
        "ld (16B) | st (16B) | bytes / B |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cap']} | {r['kernel']} | {r['dtype']} | {r['layout']} | {r['map']} | "
            f"{r['mode']} | {r['config']} | {r['registers']} | {r['local_bytes']} | "
            f"{r['loads']} ({r['loads_16b']}) | {r['stores']} ({r['stores_16b']}) | "
            f"{r['bytes_over_feat']} |"
            if not r["error"]
            else f"| {r['cap']} | {r['kernel']} | compile error: {r['error']} |"
        )
    return "\n".join(lines)


def summarize(rows: list[dict]) -> str:
    """Per target and kernel, split by whether rows can be 16-byte aligned: register range,
    local memory and the 16-byte share of the global accesses."""
    groups: dict = {}
    for r in rows:
        if not r["error"]:
            groups.setdefault((r["cap"], r["kernel"], r["aligned"]), []).append(r)
    lines = [
        "| sm | kernel | rows 16-byte alignable | compilations | registers | local bytes | "
        "ld 16B / all | st 16B / all |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (cap, kernel, aligned), rs in sorted(groups.items()):

        def span(key: str, rs: list[dict] = rs) -> str:
            values = [r[key] for r in rs]
            return f"{min(values)}-{max(values)}" if min(values) != max(values) else str(values[0])

        lines.append(
            f"| {cap} | {kernel} | {'yes' if aligned else 'no'} | {len(rs)} | "
            f"{span('registers')} | {span('local_bytes')} | {span('loads_16b')} / "
            f"{span('loads')} | {span('stores_16b')} / {span('stores')} |"
        )
    return "\n".join(lines)


def run(caps: Sequence[int] = CAPS, max_registers: int = MAX_REGISTERS) -> dict:
    """The whole check: rows for every target (one process per target) and the problems."""
    reason = unavailable()
    if reason:
        return {"unavailable": reason}
    import triton

    context = multiprocessing.get_context("spawn")
    # The stand-in driver is process-wide state: one fresh process per target.
    with concurrent.futures.ProcessPoolExecutor(max_workers=len(caps), mp_context=context) as pool:
        rows = [row for part in pool.map(compile_for, caps) for row in part]
    problems = [message for row in rows for _, message in row_problems(row, max_registers)]
    return {
        "triton": triton.__version__,
        "caps": list(caps),
        "max_registers": max_registers,
        "rows": rows,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cap",
        type=int,
        nargs="+",
        default=list(CAPS),
        help="compute capabilities to compile for (default: 80 90)",
    )
    parser.add_argument("--max-registers", type=int, default=MAX_REGISTERS)
    parser.add_argument("--json", help="also write the rows and problems to this file")
    parser.add_argument(
        "--all-rows", action="store_true", help="print every compiled kernel, not only the summary"
    )
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the check compiles, it doesn't interpret")
    report = run(tuple(args.cap), args.max_registers)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)
    if "unavailable" in report:
        print(f"static GPU check can't run: {report['unavailable']}")
        return 2
    print(format_table(report["rows"]) if args.all_rows else summarize(report["rows"]))
    for message in report["problems"]:
        print("  -", message)
    print(
        f"static GPU check (triton {report['triton']}, sm_{', sm_'.join(map(str, args.cap))}): "
        f"{len(report['rows'])} compiled kernels, {len(report['problems'])} problems"
    )
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
