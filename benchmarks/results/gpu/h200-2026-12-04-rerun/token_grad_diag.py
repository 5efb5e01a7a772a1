"""The diagnosis behind token_grad_diag.txt: token vs plain-map gradients on CUDA, each backend,
against the PyTorch path on CPU (run from the repository root with PYTHONPATH=.)."""

import torch

import pmm_kernels
from pmm_kernels.tokens import TokenGrid

G = TokenGrid(6, 4, 2)
L = torch.tensor([0, 0, 1, 1, 2, 2])
for mode in ("a_hard_mix", "a_cutmix", "hard_mix"):
    g = torch.Generator().manual_seed(4)
    tok = torch.randn(6, 26, 10, generator=g)
    attn = torch.rand(6, 6, 4, generator=g) if mode.startswith("a_") else None
    go = torch.randn(tok.shape, generator=g)

    def grads(backend, dev, grid):
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

    ref = grads("torch", "cpu", None)
    for backend in ("torch", "triton"):
        for rep in range(3):
            t, p = grads(backend, "cuda", G), grads(backend, "cuda", None)
            print(
                mode,
                backend,
                rep,
                "tok==plain",
                torch.equal(t, p),
                "tok==cpu",
                torch.equal(t, ref),
                "plain==cpu",
                torch.equal(p, ref),
                "maxdiff",
                (t - ref).abs().max().item(),
                (p - ref).abs().max().item(),
            )
