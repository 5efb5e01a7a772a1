"""Put a :class:`~pmm_kernels.FeatureMix` into an existing model.

:func:`insert_feature_mix` registers the layer as a submodule of the model and runs it after a
named submodule through a forward hook, so the model's own ``forward(images)`` stays as it is;
:mod:`pmm_kernels.labels` gives it the labels.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pmm_kernels import validation as check
from pmm_kernels.labels import DATA_PARALLEL
from pmm_kernels.layer_state import recomputing
from pmm_kernels.modules import FeatureMix
from pmm_kernels.tokens import ancestors, token_grid, useless_placement

# Containers whose forward or users' loops run every child: a layer registered there would run.
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _needs_labels(mix: FeatureMix) -> bool:
    return mix.spec.partner_rule == "different_label" or mix.classifier is not None


@torch.compiler.disable(
    reason="the submodule an inserted FeatureMix runs after did not run in a training forward of "
    "the compiled model, so the layer never mixed: run one training step without torch.compile "
    "to see which and what to do"
)
def _report_eagerly(hook: FeatureMixHook) -> None:
    """With ``fullgraph=True`` the user sees the reason above; otherwise dynamo breaks the graph
    and this runs eagerly, raising the full message."""
    raise ValueError(hook._did_not_run())


def _engine_advice(model: nn.Module, attribute: str) -> str:
    """What to do about a layer in eval mode while its model trains, in the engine's words."""
    origin = type(model).__module__.split(".")[0]
    if origin == "torchreid":
        return (
            "torchreid's open_specified_layers (fixbase epochs) sets every child outside "
            f"open_layers to eval: add {attribute.split('.')[0]!r} to open_layers to mix then"
        )
    if origin == "fastreid":
        return (
            "fast-reid's LayerFreeze hook (cfg.MODEL.FREEZE_LAYERS) sets the frozen children to "
            "eval for cfg.SOLVER.FREEZE_ITERS iterations: the layer mixes again after them, or "
            f"insert it outside {attribute.split('.')[0]!r} to mix during the freeze"
        )
    return (
        "something set it to eval (a freeze of the layers around it?): call train() on it, or "
        "insert it outside the frozen part"
    )


def _select(output: Any, key: int | str | None, name: str) -> torch.Tensor:
    """The map to mix in a submodule's output: the output, or its element ``key``."""
    if key is None:
        if isinstance(output, tuple | list | Mapping):
            raise TypeError(
                f"insert_feature_mix: {name!r} returns {check.describe(output)}: pass "
                "output=<index or key> to say which element to mix"
            )
        found = output
    else:
        try:
            found = output[key]
        except (TypeError, KeyError, IndexError):
            raise TypeError(
                f"insert_feature_mix(output={key!r}): {name!r} returns {check.describe(output)}, "
                f"which has no element {key!r}"
            ) from None
    if not isinstance(found, torch.Tensor) or found.dim() not in (3, 4):
        where = name if key is None else f"{name}[{key!r}]"
        raise TypeError(
            f"insert_feature_mix: {where} must be an (N, C, H, W) map or (N, P + H*W, C) "
            f"tokens, got {check.describe(found)}"
        )
    return found


def _replace(output: Any, key: int | str | None, mixed: torch.Tensor) -> Any:
    """``output`` with its element ``key`` (or itself) replaced by ``mixed``."""
    if key is None:
        return mixed
    if isinstance(output, Mapping):
        return {**output, key: mixed}
    items = list(output)
    items[key] = mixed  # type: ignore[index]
    return type(output)(items) if isinstance(output, list) else tuple(items)


class FeatureMixHook:
    """A :class:`FeatureMix` running after a submodule; made by :func:`insert_feature_mix`.

    The layer is a submodule of the model (``hook.attribute`` on the nearest ancestor that is not
    a container), so ``model.train()``/``eval()`` and copies of the model reach it. After each
    training forward of the model, a hook checks that the submodule ran: a model that calls the
    submodule's children one by one never runs the submodule itself, and the layer would never
    mix. With ``classifier=``, the first training forward also checks that the classifier is
    the Linear on the mixed map's average pool (else its rows are not the Grad-CAM weights).

    Attributes:
        mix: the layer (its ``last_info`` says what the last training step mixed).
        name: the dotted name of the submodule it runs after.
        attribute: the dotted name of the layer in the model.
        output: the element of the submodule's output that is mixed (None: the output).
    """

    def __init__(
        self, model: nn.Module, after: str, mix: FeatureMix, output: int | str | None = None
    ) -> None:
        self.mix = mix
        self.name = after
        self.output = output
        self.model_name = type(model).__name__
        module = model.get_submodule(after)
        home, self.attribute = _home(model, after)
        leaf = self.attribute.rpartition(".")[2]
        if hasattr(home, leaf):
            raise ValueError(
                f"insert_feature_mix: {self.model_name} already has {self.attribute!r}: a layer "
                f"runs after {after!r} already (hook.remove() takes it out)"
            )
        home.add_module(leaf, mix.train(module.training))  # a new submodule takes its mode
        self._home = home
        self._advice = _engine_advice(model, self.attribute)
        self._ran = False
        self._checked = False  # the first passing eager check ends the probing of children
        self._warned_eval = False
        self._children_ran: list[str] = []
        self._child_names = [name for name, _ in module.named_children()]
        self._handles: list[RemovableHandle] = [
            module.register_forward_hook(self._after),
            model.register_forward_pre_hook(self._before_model),
            model.register_forward_hook(self._after_model),
        ]
        # Until the first passing check: which children run, for the message when it fails.
        self._probes = [
            child.register_forward_hook(functools.partial(self._child_ran, name))
            for name, child in module.named_children()
        ]
        # classifier=: its input at the first training forward, against the mixed map's pool.
        self._classifier_checked = mix.classifier is None
        self._pooled: torch.Tensor | None = None
        self._classifier_input: torch.Tensor | None = None
        self._classifier_probe: RemovableHandle | None = None

    @property
    def labels(self) -> torch.Tensor | None:
        """The layer's labels for the next forwards (:attr:`FeatureMix.labels`)."""
        return self.mix.labels

    @labels.setter
    def labels(self, labels: torch.Tensor | None) -> None:
        self.mix.labels = labels

    @contextmanager
    def labels_for(self, labels: torch.Tensor | None) -> Iterator[FeatureMixHook]:
        """Use ``labels`` for the forwards inside the ``with`` block."""
        previous, self.mix.labels = self.mix.labels, labels
        try:
            yield self
        finally:
            self.mix.labels = previous

    def remove(self) -> None:
        """Take the layer out again: its hooks and its submodule."""
        for handle in self._handles + self._probes:
            handle.remove()
        if self._classifier_probe is not None:
            self._classifier_probe.remove()
        delattr(self._home, self.attribute.rpartition(".")[2])

    def _before_model(self, model: nn.Module, args: tuple[Any, ...]) -> None:
        if not model.training or recomputing():  # a recompute replays the forward it belongs to
            return
        self._ran = False
        if not torch.compiler.is_compiling():
            self.mix.begin_forward()
            if not self._checked:
                self._children_ran = []
            if not self._classifier_checked and self._classifier_probe is None:
                classifier = self.mix.classifier
                assert classifier is not None
                self._classifier_probe = classifier.register_forward_hook(self._classifier_ran)

    def _child_ran(self, child_name: str, child: nn.Module, args: Any, output: Any) -> None:
        if not torch.compiler.is_compiling() and not self._checked:
            self._children_ran.append(child_name)

    def _classifier_ran(self, classifier: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._classifier_input is None and args and isinstance(args[0], torch.Tensor):
            self._classifier_input = args[0].detach()

    def _after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        self._ran = True
        if not self.mix.training:
            return None  # eval: the output stays as it is
        if getattr(module, "_is_replica", False):
            raise ValueError(f"insert_feature_mix: {DATA_PARALLEL}")
        feat = _select(output, self.output, self.name)
        # A recompute (activation checkpointing) replays the forward's labels: none needed now.
        if self.mix.labels is None and _needs_labels(self.mix) and not recomputing():
            raise ValueError(
                f"the {self.mix.mode} layer after {self.name!r} needs labels: run the model "
                "inside `with pmm_kernels.mix_labels(model, labels):` (or hook.labels_for)"
            )
        mixed = self.mix._mix(feat, None, None, None)
        if self._classifier_probe is not None and self._pooled is None:
            if self.mix.layout_of(feat) == "nchw":
                self._pooled = mixed.detach().float().mean((2, 3))
            else:  # tokens: a cls-token head scores each token (docs/transformers.md)
                self._classifier_probe.remove()
                self._classifier_probe, self._classifier_checked = None, True
        return _replace(output, self.output, mixed)

    def _after_model(self, model: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not model.training or recomputing():
            return
        compiling = torch.compiler.is_compiling()
        if not self._ran:
            if compiling:
                _report_eagerly(self)
            raise ValueError(self._did_not_run())
        if not self.mix.training:
            if not compiling and not self._warned_eval:
                self._warned_eval = True
                warnings.warn(
                    f"{self.model_name} trains but its FeatureMix {self.attribute!r} is in eval "
                    f"mode, so it does not mix: {self._advice}. Warned once.",
                    stacklevel=2,
                )
            return
        if not compiling and not self._checked:
            self._checked = True
            for probe in self._probes:
                probe.remove()
        if not compiling and self._classifier_probe is not None:
            self._check_classifier()

    def _check_classifier(self) -> None:
        """classifier= must be the Linear on the mixed map's average pool (checked once)."""
        assert self._classifier_probe is not None
        self._classifier_probe.remove()
        self._classifier_probe, self._classifier_checked = None, True
        seen, pooled = self._classifier_input, self._pooled
        self._classifier_input = self._pooled = None
        if seen is None or pooled is None:
            warnings.warn(
                f"insert_feature_mix(after={self.name!r}): the classifier given to the layer did "
                "not run in this training forward, so whether it is the Linear on this map's "
                "pooled feature could not be checked",
                stacklevel=3,
            )
            return
        tolerance = 1e-2 if seen.dtype in (torch.float16, torch.bfloat16) else 1e-4
        seen = seen.float().flatten(1)
        fits = seen.shape == pooled.shape and torch.allclose(
            seen, pooled, rtol=tolerance, atol=tolerance * float(pooled.abs().max().clamp_min(1e-6))
        )
        if not fits:
            raise ValueError(
                f"insert_feature_mix(after={self.name!r}): the classifier given to the layer does "
                f"not read the average-pooled map of {self.name!r} (its input was "
                f"{check.describe(seen)}, not that pool: another layer, a BNNeck or another "
                "pooling sits between them), so its rows are not the Grad-CAM weights: build the "
                "FeatureMix without classifier= (activation saliency), or insert it where the "
                "classifier reads the pooled map"
            )

    def _did_not_run(self) -> str:
        module_children = [f"{self.name}.{name}" for name in self._child_names]
        message = (
            f"insert_feature_mix(after={self.name!r}): {self.name!r} did not run in this "
            f"training forward of {self.model_name}, so the layer after it never mixed"
        )
        if self._children_ran:
            ran = [f"{self.name}.{name}" for name in self._children_ran]
            return (
                f"{message}. The model calls its children directly; those that ran: {ran}. "
                f"Insert after the last of them: after={ran[-1]!r}"
            )
        if module_children:
            return (
                f"{message}, nor did its children {module_children}: insert after a "
                "submodule that the model's forward calls"
            )
        return f"{message}: insert after a submodule that the model's forward calls"


def _home(model: nn.Module, after: str) -> tuple[nn.Module, str]:
    """The nearest ancestor of ``after`` that is not a container, and the layer's dotted name."""
    parts = after.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        home_name = ".".join(parts[:depth])
        home = model.get_submodule(home_name)
        if not isinstance(home, CONTAINERS):
            leaf = "mix_after_" + "_".join(parts[depth:])
            return home, f"{home_name}.{leaf}" if home_name else leaf
    raise ValueError(
        f"insert_feature_mix: {after!r} sits only in containers (nn.Sequential, nn.ModuleList, "
        "nn.ModuleDict), which would run the layer as one of their children; wrap the model in "
        "an nn.Module or put the FeatureMix into the Sequential yourself"
    )


def resolve_after(model: nn.Module, after: str) -> str:
    """``after`` with each negative index into an ``nn.Sequential``/``nn.ModuleList`` resolved.

    ``"backbone.layer3.-1"`` is the last block of ``layer3`` whatever the network's depth: the
    end of the stage for ResNet-50 (``layer3.5``) and ResNet-101 (``layer3.22``) alike.

    Example:
        >>> import torchvision
        >>> resolve_after(torchvision.models.resnet101(), "layer3.-1")
        'layer3.22'
    """
    module, parts = model, list[str]()
    for part in after.split("."):
        if part.lstrip("-").isdigit() and part.startswith("-"):
            if not isinstance(module, nn.Sequential | nn.ModuleList):
                raise ValueError(
                    f"after={after!r}: a negative index counts the blocks of an nn.Sequential or "
                    f"nn.ModuleList, and {'.'.join(parts) or 'the model'!r} is a "
                    f"{type(module).__name__}"
                )
            count = len(module)
            if not -count <= int(part) < 0:
                raise ValueError(
                    f"after={after!r}: {'.'.join(parts)!r} has {count} blocks, so its negative "
                    f"indices are -1 to -{count}"
                )
            part = str(count + int(part))
        parts.append(part)
        try:
            module = module.get_submodule(part)
        except AttributeError:
            here = ".".join(parts[:-1])
            names = [name for name, _ in module.named_children()]
            raise ValueError(
                f"after={after!r} is not a submodule of {type(model).__name__}: "
                f"{here + '.' if here else ''}{part} does not exist; the children there are "
                f"{names}"
            ) from None
    return ".".join(parts)


def insert_feature_mix(
    model: nn.Module, after: str, mix: FeatureMix, *, output: int | str | None = None
) -> FeatureMixHook:
    """Run ``mix`` on the output of ``model``'s submodule ``after``, through a forward hook.

    The model's ``forward`` is untouched, so training engines that call ``model(images)`` keep
    working; give the labels with :func:`mix_labels` (or :func:`labels_from_batch`, or the
    returned hook). The layer becomes the submodule ``hook.attribute`` of the model, e.g.
    ``model.mix_after_layer3``: ``model.train()``/``eval()`` switch it, it adds no keys to
    ``state_dict`` and it travels with copies of the model. A training forward of ``model`` in
    which ``after`` did not run raises a ``ValueError`` naming the children that did.

    Args:
        model: any ``nn.Module`` that is not a container (wrap an ``nn.Sequential`` first).
        after: dotted name of the submodule, as in ``model.named_modules()``, e.g. ``"layer3"``;
            a negative index counts from the end of an ``nn.Sequential``/``nn.ModuleList``:
            ``"backbone.layer3.-1"`` is the end of the stage at any depth (:func:`resolve_after`).
        mix: the layer to run.
        output: for a submodule that returns a tuple, list or dict (torchreid's MLFN blocks),
            the index or key of the map to mix; the rest passes through.

    Transformers (docs/transformers.md): a block's (N, P + H*W, C) tokens are mixed on the grid
    read from the model (timm's ``patch_embed.grid_size`` and ``num_prefix_tokens``,
    TransReID's ``patch_embed.num_y/num_x``) unless the layer has one; a timm model whose
    ``output_fmt`` is NHWC (Swin) sets the layer's layout to ``"nhwc"``. A placement where mixing
    the patch tokens changes nothing (after the last block of a cls-token head, inside
    TransReID's JPM branches) is refused, naming the module to use.

    Returns:
        The :class:`FeatureMixHook`; ``hook.remove()`` takes the layer out.

    Raises:
        ValueError: no submodule of that name, only containers around it, or a layer already
            after it. TypeError: ``mix`` is not a FeatureMix.

    Example:
        >>> import torchvision
        >>> from pmm_kernels import mix_labels
        >>> net = torchvision.models.resnet18(num_classes=4)
        >>> hook = insert_feature_mix(net, "layer4", FeatureMix(classifier=net.fc))
        >>> with mix_labels(net, torch.tensor([0, 1, 2, 3])):
        ...     logits = net(torch.randn(4, 3, 256, 128))
        >>> net.mix_after_layer4.last_info.mask.shape
        torch.Size([4, 8, 4])
    """
    if not isinstance(mix, FeatureMix):
        raise TypeError(f"mix must be a FeatureMix, got {check.describe(mix)}")
    if not isinstance(after, str) or not after:
        raise ValueError(f"after must be the dotted name of a submodule, got {after!r}")
    if output is not None and (not isinstance(output, int | str) or isinstance(output, bool)):
        raise TypeError(f"output must be an index or a key, got {check.describe(output)}")
    after = resolve_after(model, after)
    useless = useless_placement(model, after)
    if useless is not None:
        raise ValueError(f"insert_feature_mix: {useless}")
    if mix.token_grid is None:
        mix.token_grid = token_grid(model)
    # timm's Swin (here or inside a wrapper, a ReID network's backbone) returns NHWC stages.
    formats = [getattr(owner, "output_fmt", None) for _, owner in ancestors(model, after)]
    if mix.layout is None and "NHWC" in formats:
        mix.layout = "nhwc"
    return FeatureMixHook(model, after, mix, output)
