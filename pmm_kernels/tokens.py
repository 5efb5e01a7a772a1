"""Transformer outputs as feature maps: token grids, token saliency, placements that do nothing.

A ViT block returns (N, P + L, C) tokens: P prefix tokens (cls, distillation, registers) and
L = H * W patch tokens in row-major order. :class:`TokenGrid` views the patch tokens as an
(N, C, H, W) map without a copy (channels_last strides, which the op takes as they are), so every
mode of the family mixes them as it mixes a CNN's map; the prefix tokens pass through. timm's
Swin stages return (N, H, W, C) maps, seen the same way. docs/transformers.md says what each
saliency means on tokens.

The op takes the tokens themselves (``feature_mix(tokens, ..., token_grid=grid)``): it mixes the
patch tokens into the output tokens' own positions and copies the prefix, so tokens cost the
passes over memory that a map costs.

Example:
    >>> grid = TokenGrid(height=4, width=2, prefix=1)
    >>> tokens = torch.randn(3, 1 + 8, 16)
    >>> patches = grid.patches(tokens)
    >>> patches.shape, patches.data_ptr() == tokens[:, 1:].data_ptr()  # a view, no copy
    (torch.Size([3, 16, 4, 2]), True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pmm_kernels import validation as check
from pmm_kernels.ops.utils import patch_view

__all__ = [
    "LAYOUTS",
    "ClsAttention",
    "TokenGrid",
    "ancestors",
    "token_grid",
    "token_norm",
    "useless_placement",
]

# What a layer's input is: an (N, C, H, W) map, (N, P + H*W, C) tokens, or an (N, H, W, C) map.
LAYOUTS = ("nchw", "tokens", "nhwc")


@dataclass(frozen=True)
class TokenGrid:
    """Where the patch tokens sit: ``prefix`` tokens first, then a ``height x width`` grid.

    Attributes:
        height, width: the patch grid (timm's ``patch_embed.grid_size``; TransReID's
            ``patch_embed.num_y, num_x``: 21 x 10 at 256x128 with its stride-12 patches).
        prefix: tokens before the patches: 1 for a cls token, 2 with DeiT's distillation token,
            plus any register tokens.
    """

    height: int
    width: int
    prefix: int = 1

    def __post_init__(self) -> None:
        check.check_positive_int("height", self.height)
        check.check_positive_int("width", self.width)
        if not isinstance(self.prefix, int) or isinstance(self.prefix, bool) or self.prefix < 0:
            raise ValueError(f"prefix must be an int >= 0, got {self.prefix!r}")

    def patches(self, tokens: torch.Tensor) -> torch.Tensor:
        """The (N, C, H, W) view of the patch tokens of ``tokens`` (no copy; channels_last
        strides with the tokens' batch stride).

        Raises:
            ValueError: ``tokens`` is not (N, P + H*W, C) for this grid (one line, the counts).
        """
        tokens = check.check_tensor("tokens", tokens)
        expected = self.prefix + self.height * self.width
        if tokens.dim() != 3 or tokens.shape[1] != expected:
            raise ValueError(
                f"tokens must be (N, {self.prefix} + {self.height}*{self.width} = {expected}, C) "
                f"for a {self.height}x{self.width} grid after {self.prefix} prefix tokens, got "
                f"{check.describe(tokens)}: give the model's grid (token_grid=TokenGrid(...))"
            )
        return patch_view(tokens, self.height, self.width, self.prefix)

    def op_grid(self) -> tuple[int, int, int]:
        """``(height, width, prefix)``, as the op takes the grid."""
        return self.height, self.width, self.prefix


def token_grid(model: nn.Module) -> TokenGrid | None:
    """The token grid of a timm or TransReID vision transformer, read from the model; None when
    the model has no ``patch_embed`` that says it.

    timm: ``patch_embed.grid_size`` and the model's ``num_prefix_tokens``. TransReID:
    ``patch_embed.num_y``/``num_x`` and its cls token (TransReID has no other prefix token;
    its SIE camera embedding is added to the tokens, not prepended).
    """
    for module in model.modules():
        embed = getattr(module, "patch_embed", None)
        if embed is None:
            continue
        prefix = getattr(module, "num_prefix_tokens", None)
        if prefix is None:
            prefix = int(getattr(module, "cls_token", None) is not None) + int(
                getattr(module, "dist_token", None) is not None
            )
        if hasattr(embed, "grid_size"):
            height, width = (int(v) for v in embed.grid_size)
            return TokenGrid(height, width, int(prefix))
        if hasattr(embed, "num_y") and hasattr(embed, "num_x"):
            return TokenGrid(int(embed.num_y), int(embed.num_x), int(prefix))
    return None


def token_norm(patches: torch.Tensor) -> torch.Tensor:
    """The label-free token saliency: each patch token's L2 norm, (N, H, W).

    On LayerNorm'd, signed tokens ``ReLU(sum_c)`` (the CNN default) is close to zero everywhere
    and means nothing; the norm grows with how far a token stands out of the average token (the
    "high-norm" tokens of ViTs), which is what attention and pooling weigh most.
    """
    # Reduced along the tokens' own channel axis (the map's dim 1 is the innermost in memory):
    # several times faster than a reduction over the permuted view's dim 1.
    return patches.permute(0, 2, 3, 1).float().norm(dim=-1)


class ClsAttention:
    """The cls token's attention to the patch tokens in one transformer block, as saliency.

    Captures the input of ``attention`` (a timm or TransReID ``Attention`` with ``qkv``,
    ``num_heads`` and ``scale``) at each forward and, when the layer asks, computes the
    attention of the cls token (token 0) to every token from that block's q and k, averaged
    over heads: one row of the attention matrix, never the whole L x L.

    Args:
        attention: the ``Attention`` module of the block before the layer (``blocks[i].attn``).
        prefix: tokens before the patches (their attention is left out).

    Example:
        >>> # probe = ClsAttention(model.blocks[7].attn, prefix=model.num_prefix_tokens)
        >>> # insert_feature_mix(model, "blocks.7", FeatureMix(saliency=probe))
    """

    def __init__(self, attention: nn.Module, prefix: int = 1) -> None:
        for name in ("qkv", "num_heads"):
            if not hasattr(attention, name):
                raise TypeError(
                    f"attention must be a ViT attention module with qkv and num_heads, got "
                    f"{type(attention).__name__} without {name}"
                )
        self.attention, self.prefix = attention, prefix
        self._input: torch.Tensor | None = None
        attention.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._input = args[0] if args else None

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        """The (N, H, W) attention of the cls token to the patches of ``patches``' grid."""
        x = self._input
        if x is None:
            raise ValueError(
                "ClsAttention: its attention module did not run before the layer: give it the "
                "attention of a block that runs before the layer"
            )
        n, tokens, channels = x.shape
        height, width = patches.shape[2], patches.shape[3]
        if tokens != self.prefix + height * width:
            raise ValueError(
                f"ClsAttention: the attention saw {tokens} tokens, the layer's map has "
                f"{self.prefix} + {height}*{width}: give the attention of the same token grid"
            )
        heads = int(self.attention.num_heads)  # type: ignore[arg-type]
        qkv = self.attention.qkv
        assert isinstance(qkv, nn.Linear)
        weight, bias = qkv.weight, qkv.bias
        w_q, w_k = weight[:channels], weight[channels : 2 * channels]
        b_q = None if bias is None else bias[:channels]
        b_k = None if bias is None else bias[channels : 2 * channels]
        with torch.no_grad():
            q = F.linear(x[:, :1], w_q, b_q).view(n, 1, heads, -1).transpose(1, 2)
            k = F.linear(x, w_k, b_k).view(n, tokens, heads, -1).transpose(1, 2)
            q = getattr(self.attention, "q_norm", nn.Identity())(q)
            k = getattr(self.attention, "k_norm", nn.Identity())(k)
            scale = getattr(self.attention, "scale", q.shape[-1] ** -0.5)
            row = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)[:, 0]
        return row[:, self.prefix :].reshape(n, height, width).float()


def ancestors(model: nn.Module, after: str) -> list[tuple[str, nn.Module]]:
    """The modules that hold submodule ``after``, from ``model`` down to its parent, each with
    its dotted name in ``model`` ("" for ``model``): a ViT inside a wrapper (a ReID network's
    ``backbone``) is found as well as a bare one."""
    names = after.split(".")[:-1]
    found, module = [("", model)], model
    for depth, name in enumerate(names, 1):
        module = module.get_submodule(name)
        found.append((".".join(names[:depth]), module))
    return found


def useless_placement(model: nn.Module, after: str) -> str | None:
    """Why mixing patch tokens after ``after`` would change nothing, or None.

    - A timm ViT whose head reads only the cls token (``global_pool="token"``): after its last
      block (or its final norm) no later layer lets the patch tokens reach the cls token.
    - A TransReID model with the JPM head (``shuffle_groups``): its ``b1``/``b2`` branches run the
      last block on the cls token's row alone or on shuffled tokens, whose grid is gone.

    The ViT or TransReID model may be ``model`` or any module on the way to ``after``.
    """
    for prefix, owner in ancestors(model, after):
        inner = after[len(prefix) + 1 :] if prefix else after
        reason = _useless_in(owner, inner, f"{prefix}." if prefix else "")
        if reason is not None:
            return f"after={after!r}: {reason}"
    return None


def _useless_in(model: nn.Module, after: str, prefix: str) -> str | None:
    """:func:`useless_placement` for ``model`` itself, ``after`` relative to it and ``prefix``
    its name in the model the user gave."""
    blocks = getattr(model, "blocks", None)
    if getattr(model, "global_pool", None) == "token" and isinstance(blocks, nn.Sequential):
        last = f"blocks.{len(blocks) - 1}"
        if after == last or after.split(".")[0] in ("norm", "fc_norm", "head", "head_drop"):
            return (
                f"{type(model).__name__}'s head reads only the cls token, and no block after "
                "this point lets the patch tokens reach it, so mixing them changes nothing: "
                f"insert after an earlier block, e.g. after='{prefix}blocks.{len(blocks) - 2}'"
            )
    if hasattr(model, "shuffle_groups") and after.split(".")[0] in ("b1", "b2"):
        base = getattr(model, "base", None)
        depth = len(base.blocks) if base is not None and hasattr(base, "blocks") else None
        instead = f"'{prefix}base.blocks.{depth - 2}'" if depth else f"a block of '{prefix}base'"
        return (
            "the JPM branches see the cls token's row or shuffled tokens, whose grid is gone, "
            "so mixing there changes nothing or mixes noise: insert after the last block the "
            f"shared trunk runs, {instead}"
        )
    return None
