"""A short look at what A-Hard-Mix does: ``python -m pmm_kernels.demo``.

Mixes a small PK batch on the paper's 24x8 map and prints, per sample, which blocks it took from
which partner, and the mask of the first sample.
"""

from __future__ import annotations

import argparse

import torch

from pmm_kernels import a_hard_mix


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=3, help="identities in the batch (P)")
    parser.add_argument("--per-id", type=int, default=2, help="images per identity (K)")
    parser.add_argument("--seed", type=int, default=0, help="seed for features and partners")
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    n = args.ids * args.per_id
    feat = torch.randn(n, 64, 24, 8, generator=generator)
    weights = torch.rand(n, 64, generator=generator)
    labels = torch.arange(args.ids).repeat_interleave(args.per_id)
    out, info = a_hard_mix(feat, weights, labels, generator=generator, return_info=True)

    print(f"A-Hard-Mix of {n} samples, 24x8 map, 3x2 blocks (8x4 grid), k=3")
    for i in range(n):
        j = int(info.partners[i])
        blocks = ", ".join(f"{b} (row {b // 4}, col {b % 4})" for b in info.blocks[i].tolist())
        source = f"sample {j} (id {int(labels[j])})" if j >= 0 else "nobody (no other id)"
        print(
            f"sample {i} (id {int(labels[i])}): blocks {blocks} from {source}, "
            f"lam={float(info.lam[i]):.4f}"
        )
    print("mask of sample 0 (# = replaced):")
    for row in info.mask[0].tolist():
        print("  " + "".join("#" if cell else "." for cell in row))
    changed = (out != feat).any(dim=1).sum().item()
    print(f"{changed} of {n * 24 * 8} cells changed; every other value is feat's, bit for bit")


if __name__ == "__main__":
    main()
