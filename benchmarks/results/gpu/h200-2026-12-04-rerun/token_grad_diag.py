"""The diagnosis behind token_grad_diag.txt: token vs plain-map gradients on CUDA, each backend,
against the PyTorch path on CPU (run from the repository root with PYTHONPATH=.)."""

import torch

import pmm_kernels
from pmm_kernels.tokens import TokenGrid

G = TokenGrid(6, 4, 2)
L = torch.tensor([0, 0, 1, 1, 2, 2])


def grads(mode, tok, attn, go, backend, dev, grid):
    """The gradient of the mix of ``tok`` (as tokens with ``grid``, else as a plain map) for
    ``go``, as the (N, C, H, W) patch gradient on CPU."""
    x = (tok if grid else G.patches(tok).contiguous()).to(dev).requires_grad_()
    out, _ = pmm_kernels.feature_mix(
        x,
        L.to(dev),
        None if attn is None else attn.to(dev),
        mode=mode,
        block_size=(2, 2),
        num_blocks=2,
        backend=backend,
        generator=torch.Generator().manual_seed(2),
        token_grid=grid,
    )
    gout = go if grid else G.patches(go)
    (gr,) = torch.autograd.grad(out, x, gout.to(dev))
    return (G.patches(gr) if grid else gr).cpu()


for mode in ("a_hard_mix", "a_cutmix", "hard_mix"):
    g = torch.Generator().manual_seed(4)
    tok = torch.randn(6, 26, 10, generator=g)
    attn = torch.rand(6, 6, 4, generator=g) if mode.startswith("a_") else None
    go = torch.randn(tok.shape, generator=g)
    ref = grads(mode, tok, attn, go, "torch", "cpu", None)
    for backend in ("torch", "triton"):
        for rep in range(3):
            t = grads(mode, tok, attn, go, backend, "cuda", G)
            p = grads(mode, tok, attn, go, backend, "cuda", None)
            print(
                mode, backend, rep,
                "tok==plain", torch.equal(t, p),
                "tok==cpu", torch.equal(t, ref),
                "plain==cpu", torch.equal(p, ref),
                "maxdiff", (t - ref).abs().max().item(), (p - ref).abs().max().item(),
            )  # fmt: skip
