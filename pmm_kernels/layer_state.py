"""What a :class:`~pmm_kernels.FeatureMix` keeps between calls, outside its module attributes.

- Its batch labels live in :data:`BATCH_LABELS`, keyed by the layer's :class:`LabelSlot`: dynamo
  takes tensors reached through an ``nn.Module``'s attributes to have static shapes, so labels
  stored on the layer made ``torch.compile`` recompile for every batch size.
- What each training call drew (:class:`Call`), so that the forward activation checkpointing
  recomputes during the backward (:func:`recomputing`) replays it exactly.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from pmm_kernels.modes import MixInfo

__all__ = ["BATCH_LABELS", "Call", "LabelSlot", "draw_state", "recomputing"]


@dataclass(frozen=True)
class Call:
    """What one training call of a layer drew, so that a recompute can replay it exactly."""

    info: MixInfo
    labels: torch.Tensor | None
    draw_state: torch.Tensor | None  # the generator's state before the call's draws
    draw_device: torch.device


def recomputing() -> bool:
    """True while autograd runs a backward, the only time a forward runs inside one: activation
    checkpointing (``torch.utils.checkpoint``, reentrant or not; timm's
    ``set_grad_checkpointing``) recomputing the forward to get its saved tensors. False while
    dynamo traces (compiled code does not replay; see docs/layer.md)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


def draw_state(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """The state of the generator a call draws from: the layer's, else the device's default."""
    if generator is not None:
        return generator.get_state()
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


# Each layer's batch labels, by the id of its LabelSlot.
BATCH_LABELS: dict[int, torch.Tensor | None] = {}


class LabelSlot:
    """A layer's key into :data:`BATCH_LABELS`, where its labels live instead of on the layer.

    Dynamo takes tensors reached through an ``nn.Module``'s attributes to have static shapes
    (``torch._dynamo.config.force_nn_module_property_static_shapes``): labels stored on the
    layer made ``torch.compile`` recompile for every batch size. A module-level dict is read as
    a global, whose shapes may vary. The entry goes when the slot does; a copy of the layer gets
    a slot of its own, empty.
    """

    __slots__ = ("__weakref__",)

    def __init__(self) -> None:
        weakref.finalize(self, BATCH_LABELS.pop, id(self), None)

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return LabelSlot, ()
