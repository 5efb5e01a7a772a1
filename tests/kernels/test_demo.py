"""`python -m pmm_kernels.demo`, the first thing the README offers to run: it runs, and what it
prints is what the op did (the blocks it names are the cells its mask draws)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pmm_kernels import demo


def test_demo_prints_blocks_from_partners_of_another_identity(capsys) -> None:
    demo.main(["--ids", "3", "--per-id", "2", "--seed", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "A-Hard-Mix of 6 samples, 24x8 map, 3x2 blocks (8x4 grid), k=3"
    samples = [
        re.match(r"sample (\d) \(id (\d)\): blocks (.*) from sample (\d) \(id (\d)\)", line)
        for line in lines[1:7]
    ]
    assert all(samples), lines[1:7]
    for match in samples:
        assert match is not None
        own_id, partner, partner_id = int(match[2]), int(match[4]), int(match[5])
        assert partner_id != own_id and partner_id == partner // 2  # PK labels: id = index // K
    # The mask printed for sample 0 covers exactly the three 3x2 blocks named on its line.
    assert samples[0] is not None
    blocks = [int(b) for b in re.findall(r"(\d+) \(row", samples[0][3])]
    mask = [row.strip() for row in lines[8:32]]
    drawn = {(r, c) for r, row in enumerate(mask) for c, cell in enumerate(row) if cell == "#"}
    named = {
        (3 * (b // 4) + dr, 2 * (b % 4) + dc) for b in blocks for dr in range(3) for dc in range(2)
    }
    assert drawn == named
    assert lines[-1].endswith("every other value is feat's, bit for bit")


@pytest.mark.slow
def test_demo_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pmm_kernels.demo", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("A-Hard-Mix of 6 samples")
