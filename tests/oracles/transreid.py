"""A small model with TransReID's structure (He et al., ICCV 2021; damo-cv/TransReID,
model/backbones/vit_pytorch.py and model/make_model.py), written here from its description,
since TransReID is not on PyPI: overlapping stride-12 patches (21 x 10 at 256x128), a cls token,
the SIE camera embedding added to the tokens, a trunk that runs all blocks but the last, and the
JPM head: the last block (with the final norm) copied into a global branch ``b1`` on all tokens
and a local branch ``b2`` run on shuffled, grouped patch tokens with the cls token."""

from __future__ import annotations

import copy

import torch
from timm.models.vision_transformer import Block
from torch import nn


class OverlapPatchEmbed(nn.Module):
    """TransReID's ``PatchEmbed_overlap``: 16x16 patches with stride 12; ``num_y x num_x``."""

    def __init__(self, height: int, width: int, dim: int, patch: int = 16, stride: int = 12):
        super().__init__()
        self.num_y = (height - patch) // stride + 1
        self.num_x = (width - patch) // stride + 1
        self.proj = nn.Conv2d(3, dim, patch, stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class TransReIDBase(nn.Module):
    """The ViT trunk with SIE; ``forward`` runs every block but the last (the JPM's)."""

    def __init__(self, height=256, width=128, dim=48, depth=4, heads=3, cameras=4, sie=3.0):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(height, width, dim)
        tokens = self.patch_embed.num_y * self.patch_embed.num_x
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.sie_embed = nn.Parameter(torch.randn(cameras, 1, dim) * 0.02)
        self.sie_xishu = sie
        self.blocks = nn.ModuleList(Block(dim, heads, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor, cam_label: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = x + self.pos_embed + self.sie_xishu * self.sie_embed[cam_label]
        for block in self.blocks[:-1]:
            x = block(x)
        return x


def shuffle_unit(features: torch.Tensor, shift: int, group: int) -> torch.Tensor:
    """TransReID's shift and patch shuffle of the patch tokens (the cls token left out)."""
    batch, _, dim = features.shape
    patches = torch.cat([features[:, shift + 1 :], features[:, 1 : shift + 1]], dim=1)
    x = patches.reshape(batch, group, -1, dim).transpose(1, 2).contiguous()
    return x.reshape(batch, -1, dim)


class TransReIDLocal(nn.Module):
    """TransReID with JPM: a global feature from ``b1`` and 4 local ones from ``b2``."""

    def __init__(self, num_classes: int, parts: int = 4, shift: int = 5, groups: int = 2):
        super().__init__()
        self.base = TransReIDBase()
        last = self.base.blocks[-1]
        self.b1 = nn.Sequential(copy.deepcopy(last), copy.deepcopy(self.base.norm))
        self.b2 = nn.Sequential(copy.deepcopy(last), copy.deepcopy(self.base.norm))
        self.shuffle_groups, self.shift_num, self.divide_length = groups, shift, parts
        dim = self.base.norm.normalized_shape[0]
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        self.classifiers_local = nn.ModuleList(
            nn.Linear(dim, num_classes, bias=False) for _ in range(parts)
        )

    def forward(self, images: torch.Tensor, cam_label: torch.Tensor):
        features = self.base(images, cam_label)
        global_feat = self.b1(features)[:, 0]
        token = features[:, :1]
        x = shuffle_unit(features, self.shift_num, self.shuffle_groups)
        length = x.shape[1] // self.divide_length
        local = [
            self.b2(torch.cat([token, x[:, i * length : (i + 1) * length]], dim=1))[:, 0]
            for i in range(self.divide_length)
        ]
        if not self.training:
            return torch.cat([global_feat, *(f / self.divide_length for f in local)], dim=1)
        logits = [self.classifier(global_feat)] + [
            head(f) for head, f in zip(self.classifiers_local, local, strict=True)
        ]
        return logits, [global_feat, *local]
