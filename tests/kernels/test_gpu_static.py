"""What a GPU would execute: every Triton launch of the op, compiled for sm_80 and sm_90.

``python -m pmm_kernels.testing.static_check`` runs once (in a child process: the check compiles,
while this process may have ``TRITON_INTERPRET=1`` set) and the tests read its report. Skipped, with
the reason, where the installed Triton lacks what the check relies on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pmm_kernels.testing import cases, static_check

ROOT = Path(__file__).resolve().parents[2]
STREAMING_KERNELS = set(static_check.DENSE_STREAMS)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("static_check") / "report.json"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "pmm_kernels.testing.static_check", "--json", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode == 2:
        pytest.skip(result.stdout.strip())
    assert path.exists(), result.stdout + result.stderr
    return json.loads(path.read_text())


def problems_of_kind(report: dict, kind: str) -> list[str]:
    return [
        message
        for row in report["rows"]
        for found, message in static_check.row_problems(row, report["max_registers"])
        if found == kind
    ]


@pytest.mark.slow
def test_every_launch_compiles_for_sm80_and_sm90(report):
    assert problems_of_kind(report, "compile") == []
    compiled = {
        (row["cap"], row["kernel"], row["dtype"], row["layout"], row["map"])
        for row in report["rows"]
    }
    for cap in static_check.CAPS:
        for dtype in cases.DTYPES:
            for layout in static_check.LAYOUTS:
                for shape in cases.COMPILED:
                    for kernel in (
                        "_saliency_copy_kernel",
                        "_plan_kernel",
                        "_patch_kernel",
                        "_mix_kernel",
                        "_feature_mix_bwd_kernel",
                    ):
                        name = static_check.dtype_name(dtype)
                        assert (cap, kernel, name, layout, shape.name) in compiled
    modes = {row["mode"] for row in report["rows"] if row["kernel"] == "_plan_kernel"}
    assert modes == {call.name for call in cases.CALLS} | {static_check.chunked_mode()}


@pytest.mark.slow
def test_no_local_memory(report):
    assert problems_of_kind(report, "local") == []


@pytest.mark.slow
def test_at_most_96_registers_per_thread(report):
    assert report["max_registers"] == 96
    assert problems_of_kind(report, "registers") == []


@pytest.mark.slow
def test_streaming_kernels_move_their_dense_tiles_in_16_byte_accesses(report):
    assert problems_of_kind(report, "loads_16b") == []
    assert problems_of_kind(report, "stores_16b") == []
    # Not vacuous: every streaming kernel was held to it in every dtype and both layouts.
    checked = {
        (row["kernel"], row["dtype"], row["layout"])
        for row in report["rows"]
        if row["kernel"] in STREAMING_KERNELS and row["aligned"]
    }
    assert checked == {
        (kernel, dtype, layout)
        for kernel in STREAMING_KERNELS
        for dtype in map(static_check.dtype_name, cases.DTYPES)
        for layout in static_check.LAYOUTS
    }


@pytest.mark.slow
def test_bytes_model_at_the_paper_map(report):
    # 24x8 map, three 3x2 blocks: f = 18/192. The copy passes move (2 + f) B, the patch 2 f B.
    rows = {
        (row["kernel"], row["mode"]): row["bytes_over_feat"]
        for row in report["rows"]
        if row["map"] == "24x8" and row["dtype"] == "float32" and row["layout"] == "contiguous"
    }
    f = 18 / 192
    assert rows[("_mix_kernel", "a_hard_mix, saliency map")] == pytest.approx(2 + f, abs=1e-3)
    assert rows[("_patch_kernel", "a_hard_mix, channel weights")] == pytest.approx(2 * f, abs=1e-3)
    assert rows[("_feature_mix_bwd_kernel", "backward")] == pytest.approx(2 + f, abs=1e-3)


def _row(**overrides) -> dict:
    row = {
        "cap": 90,
        "kernel": "_mix_kernel",
        "dtype": "float32",
        "layout": "nchw",
        "map": "24x8",
        "mode": "m",
        "config": "c",
        "aligned": True,
        "registers": 40,
        "local_bytes": 0,
        "loads_16b": 4,
        "stores_16b": 4,
        "tile_bytes_per_thread": 64,
        "error": None,
    }
    return {**row, **overrides}


@pytest.mark.parametrize(
    ("overrides", "kinds"),
    [
        ({}, []),
        ({"error": "CompilationError: boom"}, ["compile"]),
        ({"local_bytes": 8}, ["local"]),
        ({"registers": 97}, ["registers"]),
        ({"loads_16b": 3}, ["loads_16b"]),
        ({"stores_16b": 0}, ["stores_16b"]),
        ({"stores_16b": 0, "aligned": False}, []),
        ({"stores_16b": 0, "kernel": "_patch_kernel"}, []),
    ],
)
def test_row_problems_flag_each_miss(overrides, kinds):
    assert [kind for kind, _ in static_check.row_problems(_row(**overrides))] == kinds


@pytest.mark.parametrize(
    ("make", "aligned"),
    [
        (lambda: torch.zeros(2, 64, 24, 8), True),  # NCHW, H*W = 192
        (lambda: torch.zeros(2, 64, 7, 5), False),  # NCHW, H*W = 35
        (lambda: torch.zeros(2, 64, 7, 5).to(memory_format=torch.channels_last), True),  # C = 64
        (lambda: torch.zeros(2, 130, 24, 8).to(memory_format=torch.channels_last), False),
        # Samples 8 elements apart beyond the map: rows of the second sample start misaligned.
        (lambda: torch.zeros(2, 64 * 192 + 8)[:, : 64 * 192].view(2, 64, 24, 8), False),
    ],
    ids=["nchw-24x8", "nchw-7x5", "channels-last-C64", "channels-last-C130", "padded-samples"],
)
def test_launcher_says_which_maps_stream_16_bytes_wide(make, aligned):
    from pmm_kernels.ops.triton_launch import streams_16_byte_aligned

    assert streams_16_byte_aligned(*make().flatten(2).stride()) is aligned
