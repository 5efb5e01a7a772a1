"""The benchmarks' results as a markdown table: ``python -m benchmarks.report RESULTS.json``.

``make bench`` runs ``pytest benchmarks --benchmark-only --benchmark-json RESULTS.json`` and then
this, which writes ``RESULTS.md`` beside the JSON: one row per benchmark, its group, mean and
spread, and the figures each row records in ``extra_info`` (``x_clone``, the time over a
``clone()`` floor measured in the same run; bytes moved; GB/s; ...), headed by the machine and
versions pytest-benchmark recorded. The docs cite these two files, not numbers typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# extra_info keys shown in their own column, in this order; the rest go to "other".
COLUMNS = ("x_clone", "x_op", "bytes_over_feat", "gb_per_s", "peak_mib", "cpu_s")


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def markdown(results: dict) -> str:
    """The table of a pytest-benchmark JSON document (``--benchmark-json``)."""
    machine = results.get("machine_info", {})
    cpu = machine.get("cpu", {})
    commit = results.get("commit_info", {})
    lines = [
        f"# Benchmarks, {results.get('datetime', '?')[:19]} UTC",
        "",
        f"Machine: {cpu.get('brand_raw', machine.get('processor', '?'))}, "
        f"{cpu.get('count', '?')} CPUs ({machine.get('torch_threads', '?')} torch "
        f"threads); {machine.get('gpu', 'no GPU')}; python {machine.get('python_version')}, torch "
        f"{machine.get('torch', '?')}, triton {machine.get('triton', '?')}; "
        f"commit {str(commit.get('id', '?'))[:7]}{' (dirty)' if commit.get('dirty') else ''}.",
        "Times vary 1.5-2x from day to day on these VMs: read `x_clone` (time over `clone()` "
        "measured in the same run), not the milliseconds.",
        "",
        "| group | benchmark | mean (ms) | stddev (ms) | " + " | ".join(COLUMNS) + " | other |",
        "|---|---|---|---|" + "---|" * len(COLUMNS) + "---|",
    ]
    for bench in results.get("benchmarks", []):
        extra = dict(bench.get("extra_info", {}))
        shown = [_cell(extra.pop(key, None)) for key in COLUMNS]
        for key in ("clone_seconds", "seconds", "device", "triton_configs"):
            extra.pop(key, None)  # the columns above already say it, or it is too long for a cell
        other = ", ".join(f"{k}={v}" for k, v in extra.items())
        stats = bench["stats"]
        lines.append(
            f"| {bench.get('group') or ''} | `{bench['name']}` | {stats['mean'] * 1e3:.1f} | "
            f"{stats['stddev'] * 1e3:.1f} | " + " | ".join(shown) + f" | {other} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].endswith(".json"):
        print("usage: python -m benchmarks.report RESULTS.json", file=sys.stderr)
        return 2
    source = Path(args[0])
    target = source.with_suffix(".md")
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(markdown(json.loads(source.read_text())))
    temporary.replace(target)  # never a half-written table over a good one
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
