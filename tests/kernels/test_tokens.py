"""Token inputs (docs/transformers.md): (N, P + H*W, C) tokens mixed as the (N, C, H, W) view of
their patch tokens, every guarantee of the map path kept, on small shapes."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pmm_kernels
from pmm_kernels import FeatureMix
from pmm_kernels.tokens import ClsAttention, TokenGrid, token_norm

GRID = TokenGrid(height=6, width=4, prefix=2)
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def _tokens(dtype=torch.float32, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, GRID.prefix + 24, 10, generator=generator).to(dtype)


def test_the_patch_map_is_a_row_major_view_of_the_patch_tokens():
    tokens = _tokens()
    patches = GRID.patches(tokens)
    assert (
        patches.shape == (6, 10, 6, 4)
        and patches.is_contiguous(memory_format=torch.channels_last) is False
    )
    assert patches.untyped_storage().data_ptr() == tokens.untyped_storage().data_ptr()
    assert torch.equal(patches[:, :, 1, 2], tokens[:, GRID.prefix + 1 * 4 + 2])  # row-major
    assert torch.equal(patches.permute(0, 2, 3, 1).flatten(1, 2), tokens[:, GRID.prefix :])


def test_a_token_count_off_the_grid_is_one_line():
    with pytest.raises(
        ValueError, match=r"tokens must be \(N, 2 \+ 6\*4 = 26, C\) .* got"
    ) as error:
        GRID.patches(torch.zeros(6, 25, 10))
    assert "\n" not in str(error.value) and "tensor(" not in str(error.value)
    with pytest.raises(ValueError, match="has no token grid"):
        FeatureMix()(torch.zeros(6, 26, 10), LABELS)


@pytest.mark.parametrize("mode", list(pmm_kernels.MODES))
def test_tokens_mix_exactly_as_their_map(mode):
    tokens = _tokens()
    layer = FeatureMix(
        mode, grid=(3, 2), token_grid=GRID, generator=torch.Generator().manual_seed(1)
    )
    mixed = layer(tokens, LABELS)
    # The same mix on a plain NCHW copy of the patch map, with the same draws and saliency.
    patches = GRID.patches(tokens)
    plain = FeatureMix(mode, grid=(3, 2), generator=torch.Generator().manual_seed(1))
    attn = token_norm(patches) if pmm_kernels.MODES[mode].cells == "salient" else None
    expected = plain(patches.contiguous(), LABELS, attn)
    assert torch.equal(mixed[:, : GRID.prefix], tokens[:, : GRID.prefix])  # prefix untouched
    assert torch.equal(GRID.patches(mixed), expected)
    assert torch.equal(layer.last_info.mask, plain.last_info.mask)
    assert layer.eval()(tokens, LABELS) is tokens  # eval: the identity


class _FullSizeCopies(TorchDispatchMode):
    """Counts ops whose output is as large as the map: copies of it."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.ops.append(str(func.overloadpacket))
        return out


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_the_op_copies_token_strides_no_more_than_channels_last(backend, triton_device):
    tokens = _tokens().to(triton_device)
    patches = GRID.patches(tokens)
    dense = patches.contiguous(memory_format=torch.channels_last)
    weights = torch.rand(6, 10, device=triton_device)
    traces = []
    for feat in (patches, dense):
        with _FullSizeCopies(feat.numel()) as mode:
            pmm_kernels.a_hard_mix(
                feat, weights, LABELS.to(triton_device), block_size=(2, 2), backend=backend
            )
        traces.append(mode.ops)
    assert traces[0] == traces[1]  # the token view gets no extra contiguous()/clone()


def test_triton_and_torch_agree_bit_for_bit_on_tokens(triton_device):
    tokens = (_tokens() * 50).to(triton_device)
    outs = []
    for backend in ("torch", "triton"):
        layer = FeatureMix(
            "a_cutmix",
            grid=(3, 2),
            token_grid=GRID,
            backend=backend,
            generator=torch.Generator().manual_seed(3),
        )
        leaf = tokens.clone().requires_grad_()
        out = layer(leaf, LABELS.to(triton_device))
        (grad,) = torch.autograd.grad(
            out,
            leaf,
            torch.ones_like(out) * torch.arange(out.numel(), device=out.device).view_as(out) % 7,
        )
        outs.append((out.detach(), grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_gradients_and_double_backward_on_tokens():
    grid = TokenGrid(height=2, width=2, prefix=1)  # small: gradcheck perturbs every input
    tokens = torch.randn(4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels, partners = torch.tensor([0, 0, 1, 1]), torch.tensor([2, 3, 0, 1])

    def mix(x):
        layer = FeatureMix(
            "hard_mix",
            block_size=(1, 1),
            num_blocks=2,
            token_grid=grid,
            generator=torch.Generator().manual_seed(0),
        )
        return layer(x, labels, partners=partners)

    tokens.requires_grad_()
    assert torch.autograd.gradcheck(mix, (tokens,))
    assert torch.autograd.gradgradcheck(mix, (tokens,))


def _backward_nodes(tensor: torch.Tensor) -> set[str]:
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo += [next_node for next_node, _ in node.next_functions]
    return {type(node).__name__ for node in seen}


class _FullPasses(TorchDispatchMode):
    """Names the ops that write at least ``numel`` elements: full passes over the patch tokens.

    Views and allocations write nothing; indexed writes (``index_put_``, ``index_add_``) touch
    only the mixed cells, even where their output is a flat view of the whole storage.
    """

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        writes = not func.is_view and "empty" not in name and "index" not in name
        results = out if isinstance(out, tuple | list) else (out,)
        if writes and any(isinstance(r, torch.Tensor) and r.numel() >= self.numel for r in results):
            self.ops.append(name)
        return out


@pytest.mark.parametrize("mode", ["a_hard_mix", "cutout"])
def test_tokens_are_written_in_one_pass_forward_and_one_backward(mode, monkeypatch):
    # The op writes the mixed patch tokens straight into the output tokens and the patches'
    # gradient into the tokens' gradient: no split before it, no join (cat) after it. The
    # custom ops' bodies run in line (their Python functions, as torch.library keeps them), so
    # that the dispatch mode sees the aten ops inside them.
    for name in ("feature_mix_forward", "feature_mix_backward"):
        op = getattr(pmm_kernels.ops.feature_mix, name)
        monkeypatch.setattr(pmm_kernels.ops.feature_mix, name, op._init_fn)
    tokens = _tokens().requires_grad_()
    layer = FeatureMix(mode, grid=(3, 2), token_grid=GRID, backend="torch")
    # The saliency given, so that only the mix is counted.
    attn = torch.rand(6, 6, 4) if pmm_kernels.MODES[mode].cells == "salient" else None
    with _FullPasses(GRID.patches(tokens).numel()) as forward:
        out = layer(tokens, LABELS, attn)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    with _FullPasses(GRID.patches(tokens).numel()) as backward:
        (grad,) = torch.autograd.grad(out, tokens, grad_out)
    # The backward's one full pass: for the modes that move blocks, a copy of grad_out (only
    # the selected cells rewritten after it); for the zeroing modes, a where on the mask.
    one_pass = "aten.copy_" if mode == "a_hard_mix" else "aten.where"
    assert forward.ops == ["aten.copy_"] and backward.ops == [one_pass]
    assert _backward_nodes(out) == {"FeatureMixFunctionBackward", "AccumulateGrad"}
    assert torch.equal(grad[:, : GRID.prefix], grad_out[:, : GRID.prefix])


def test_compiles_without_graph_breaks_and_copies_drop_nothing_needed():
    torch._dynamo.reset()
    layer = FeatureMix("a_hard_mix", grid=(3, 2), token_grid=GRID)
    # aot_eager: the token op through functionalization and the autograd graph, as inductor
    # takes it; the compiled step's loss and gradient are the eager step's.
    step = torch.compile(
        lambda x: layer(x, LABELS).square().sum(), fullgraph=True, backend="aot_eager"
    )
    leaf = _tokens().requires_grad_()
    torch.manual_seed(0)
    (grad,) = torch.autograd.grad(loss := step(leaf), leaf)
    assert layer.last_info.mask.any()
    torch.manual_seed(0)
    (eager_grad,) = torch.autograd.grad(eager_loss := layer(leaf, LABELS).square().sum(), leaf)
    assert torch.equal(loss, eager_loss) and torch.equal(grad, eager_grad)
    for copied in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert copied.token_grid == GRID
        assert copied(_tokens(), LABELS).shape == (6, 26, 10)


def test_nhwc_maps_mix_as_their_nchw_view():
    maps = torch.randn(6, 6, 4, 10, generator=torch.Generator().manual_seed(2))  # (N, H, W, C)
    layer = FeatureMix(
        "cutout", grid=(3, 2), layout="nhwc", generator=torch.Generator().manual_seed(4)
    )
    plain = FeatureMix("cutout", grid=(3, 2), generator=torch.Generator().manual_seed(4))
    expected = plain(maps.permute(0, 3, 1, 2).contiguous())
    assert torch.equal(layer(maps).permute(0, 3, 1, 2), expected)


def test_cls_attention_is_the_cls_row_of_the_blocks_attention():
    timm = pytest.importorskip("timm")
    block = timm.models.vision_transformer.Block(dim=12, num_heads=3, qkv_bias=True)
    probe = ClsAttention(block.attn, prefix=GRID.prefix)
    x = torch.randn(6, GRID.prefix + 24, 12, generator=torch.Generator().manual_seed(5))
    block(x)
    saliency = probe(torch.zeros(6, 12, 6, 4))
    # Independently: the whole attention matrix, in float64, from the block's own qkv.
    normed = block.norm1(x).double()
    q, k, _ = (
        copy.deepcopy(block.attn.qkv).double()(normed).view(6, -1, 3, 3, 4).permute(2, 0, 3, 1, 4)
    )
    full = ((q @ k.transpose(-2, -1)) * 4**-0.5).softmax(-1).mean(1)  # (N, T, T)
    expected = full[:, 0, GRID.prefix :].reshape(6, 6, 4)
    assert torch.allclose(saliency.double(), expected, atol=1e-5)
    layer = FeatureMix(grid=(3, 2), token_grid=GRID, saliency=probe)
    layer(block(x), LABELS)
    # The most attended 2x2 block of the 3x2 grid is the first one the layer took.
    block_scores = expected.view(6, 3, 2, 2, 2).sum((2, 4)).flatten(1)
    assert torch.equal(layer.last_info.blocks[:, 0], block_scores.argmax(1))


@pytest.mark.parametrize("mode", list(pmm_kernels.MODES))
def test_feature_mix_takes_tokens_and_their_gradient_is_the_maps(mode, triton_device):
    # The op on tokens (token_grid=) against the op on a plain NCHW copy of their patch map:
    # same output patches, prefix copied, the same gradient to the patches and the prefix's
    # own gradient passed through; on both backends (the PyTorch path on CPU, where its
    # index_add_ adds in a fixed order; on CUDA it adds atomically).
    generator = torch.Generator().manual_seed(4)
    tokens = torch.randn(6, GRID.prefix + 24, 10, generator=generator)
    salient = pmm_kernels.MODES[mode].cells == "salient"
    attn = torch.rand(6, 6, 4, generator=generator) if salient else None
    grad_out = torch.randn(tokens.shape, generator=generator)
    for backend, device in (("torch", torch.device("cpu")), ("triton", triton_device)):
        kwargs = dict(mode=mode, block_size=(2, 2), num_blocks=2, backend=backend)
        leaf = tokens.to(device).requires_grad_()
        plain_leaf = GRID.patches(tokens).contiguous().to(device).requires_grad_()
        mixed = []
        for x, grid in ((leaf, GRID), (plain_leaf, None)):
            mixed.append(
                pmm_kernels.feature_mix(
                    x,
                    LABELS.to(device),
                    None if attn is None else attn.to(device),
                    generator=torch.Generator().manual_seed(2),
                    token_grid=grid,
                    **kwargs,
                )
            )
        (out, info), (plain, plain_info) = mixed
        assert out.shape == tokens.shape and torch.equal(out[:, :2].cpu(), tokens[:, :2])
        assert torch.equal(GRID.patches(out), plain) and torch.equal(info.mask, plain_info.mask)
        (grad,) = torch.autograd.grad(out, leaf, grad_out.to(device))
        (plain_grad,) = torch.autograd.grad(plain, plain_leaf, GRID.patches(grad_out).to(device))
        assert torch.equal(grad[:, :2].cpu(), grad_out[:, :2])
        assert torch.equal(GRID.patches(grad), plain_grad), backend


def test_feature_mix_refuses_a_token_grid_that_is_not_one():
    with pytest.raises(TypeError, match="token_grid must be a TokenGrid, got a tuple"):
        pmm_kernels.feature_mix(_tokens(), LABELS, mode="cutout", token_grid=(6, 4, 2))
    with pytest.raises(ValueError, match=r"tokens must be \(N, 2 \+ 6\*4 = 26, C\)"):
        pmm_kernels.feature_mix(_tokens()[:, 1:], LABELS, mode="cutout", token_grid=GRID)


def test_jacrev_of_the_token_mix_is_a_copy_matrix():
    # torch.func.jacrev batches the backward op over many gradients of the tokens (its vmap
    # rule folds them into the channels): the Jacobian is the mix as a 0/1 matrix, the identity
    # on the prefix.
    grid = TokenGrid(height=2, width=2, prefix=1)
    tokens = torch.randn(4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))

    def mix(x):
        out, _ = pmm_kernels.feature_mix(
            x,
            None,
            mode="cutmix",
            block_size=(1, 1),
            num_blocks=2,
            partners=torch.tensor([1, 2, 3, 0]),
            generator=torch.Generator().manual_seed(0),
            token_grid=grid,
        )
        return out

    flat = torch.func.jacrev(mix)(tokens).reshape(tokens.numel(), tokens.numel())
    probe = torch.randn(
        tokens.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal((flat @ probe.flatten()).view(tokens.shape), mix(probe))
    assert set(flat.unique().tolist()) == {0.0, 1.0}
    prefix_rows = flat.view(4, 5, 3, -1)[:, 0].reshape(12, -1)
    assert torch.equal(prefix_rows.sum(1), torch.ones(12, dtype=torch.float64))


def test_opcheck_of_the_backward_op_on_tokens():
    # The forward op's fake on tokens is checked with the others in test_compile.py; here the
    # backward's fake, its autograd formula (the double backward) and its dispatch on tokens.
    tokens = _tokens(seed=8)
    out, info = pmm_kernels.feature_mix(
        tokens,
        LABELS,
        mode="cutmix",
        block_size=(2, 2),
        token_grid=GRID,
        generator=torch.Generator().manual_seed(0),
    )
    args = (torch.randn(out.shape), *info[:3], 2, 2, True, False)
    torch.library.opcheck(pmm_kernels.ops.feature_mix.feature_mix_backward, args)
