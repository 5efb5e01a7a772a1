"""ONNX export of a trained checkpoint's eval-mode network, checked against PyTorch by onnxruntime.

What exports is the network a consumer runs: images ``(N, 3, height, width)`` (RGB scaled to
[0, 1], then normalised by the ImageNet mean and std) -> raw embeddings ``(N, D)``, with a
dynamic batch axis. The training-time feature mix (``pmm_kernels.feature_mix``) runs only in
training mode, so the exported graph has none and needs none. The ONNX file's ``metadata_props``
record everything else a consumer needs (see :data:`METADATA_KEYS`).

The exporter is ``torch.onnx.export(..., dynamo=True)``: the one torch documents as the
recommended and default path (``torch.export`` + onnxscript translation); the TorchScript
exporter (``dynamo=False``) is the deprecated one. It needs the ``deploy`` extra
(``pip install 'pmm[deploy]'``: onnx, onnxscript, onnxruntime).

Example:
    >>> report = export_onnx("runs/pmm-synthetic/checkpoint.pt", "model.onnx")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from pmm_model import MissingExtraError
from pmm_model.apps.extract import FeatureExtractor, ImageSource
from pmm_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pmm_model.run.atomic import atomic_path
from pmm_model.run.checkpoint import load_model

__all__ = [
    "ABS_TOLERANCE",
    "COSINE_TOLERANCE",
    "METADATA_KEYS",
    "ExportReport",
    "ParityError",
    "ParityResult",
    "check_opset",
    "export_onnx",
    "read_metadata",
]

# The parity bar: max |onnx - torch| / max |torch embedding|, and the least per-row cosine.
ABS_TOLERANCE = 1e-5
COSINE_TOLERANCE = 0.99999
PARITY_BATCHES = (1, 7)
INPUT_NAME, OUTPUT_NAME = "images", "embeddings"
DEPLOY_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
METADATA_KEYS = (
    "pmm.model",  # "pmm" or "baseline"
    "pmm.backbone",  # "resnet18", "resnet34" or "resnet50"
    "pmm.input_height",  # pixels
    "pmm.input_width",
    "pmm.input_layout",  # how to turn an image into the input tensor
    "pmm.mean",  # JSON list of 3 floats, RGB, for pixels scaled to [0, 1]
    "pmm.std",
    "pmm.embedding_dim",
    "pmm.output",  # what the output is and how evaluation compares it
)


class ParityError(RuntimeError):
    """onnxruntime's embeddings differ from PyTorch's beyond the tolerance."""


@dataclass
class ParityResult:
    """One parity check: ``rel_diff`` = max |onnx - torch| / max |torch|; least row cosine."""

    source: str
    batch: int
    rel_diff: float
    min_cosine: float

    @property
    def ok(self) -> bool:
        """Within :data:`ABS_TOLERANCE` and :data:`COSINE_TOLERANCE`."""
        return self.rel_diff <= ABS_TOLERANCE and self.min_cosine >= COSINE_TOLERANCE

    def __str__(self) -> str:
        return (
            f"{self.source:<6} batch {self.batch}: max|diff|/max|emb| {self.rel_diff:.2e} "
            f"(<= {ABS_TOLERANCE:g}), min cosine {self.min_cosine:.8f} (>= {COSINE_TOLERANCE})"
            f"  {'ok' if self.ok else 'FAILED'}"
        )


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well onnxruntime matched PyTorch."""

    path: Path
    metadata: dict[str, str]
    parity: list[ParityResult] = field(default_factory=list)

    @property
    def worst_rel_diff(self) -> float:
        """The largest ``rel_diff`` over the checks."""
        return max(r.rel_diff for r in self.parity)

    def summary(self) -> str:
        """The path, the metadata and one line per parity check."""
        # The two prose entries (input layout, output) are in the file for consumers.
        short = ("pmm.model", "pmm.backbone", "pmm.input_height", "pmm.input_width")
        meta = ", ".join(f"{k.removeprefix('pmm.')}={self.metadata[k]}" for k in short)
        meta += f", mean={self.metadata['pmm.mean']}, std={self.metadata['pmm.std']}"
        meta += f", embedding_dim={self.metadata['pmm.embedding_dim']}"
        return "\n".join(
            [f"wrote {self.path}", f"metadata: {meta}", "onnxruntime vs PyTorch:"]
            + [f"  {r}" for r in self.parity]
        )


def _require_deploy() -> None:
    missing = [name for name in DEPLOY_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"ONNX export needs {', '.join(missing)}: pip install 'pmm[deploy]'", name=missing[0]
        )


MIN_OPSET = 18  # the dynamo exporter's lowest


def check_opset(opset: int | None) -> None:
    """Refuse, before any work, an opset the installed ``onnx`` does not define.

    Raises:
        ValueError: ``opset`` outside ``[MIN_OPSET, the installed onnx's highest]``.
        ImportError: ``onnx`` is not installed (the ``deploy`` extra).
    """
    if opset is None:
        return
    import onnx

    highest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= highest:
        raise ValueError(
            f"opset must be in [{MIN_OPSET}, {highest}] (the installed onnx's range), got {opset}"
        )


def _metadata(args: dict[str, Any], embedding_dim: int) -> dict[str, str]:
    return {
        "pmm.model": str(args["model"]),
        "pmm.backbone": str(args["backbone"]),
        "pmm.input_height": str(args["height"]),
        "pmm.input_width": str(args["width"]),
        "pmm.input_layout": "float32 (N, 3, H, W), RGB, pixels / 255 resized to H x W "
        "(bilinear), then (x - mean) / std per channel",
        "pmm.mean": json.dumps(list(IMAGENET_MEAN)),
        "pmm.std": json.dumps(list(IMAGENET_STD)),
        "pmm.embedding_dim": str(embedding_dim),
        "pmm.output": "raw embeddings (N, D); evaluation ranks them by Euclidean distance, "
        "L2-normalise them for cosine similarity",
    }


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (needs ``onnx``)."""
    _require_deploy()
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _parity(
    model: nn.Module, session: Any, images: torch.Tensor, source: str
) -> list[ParityResult]:
    results = []
    for batch in PARITY_BATCHES:
        x = images[:batch]
        with torch.no_grad():
            expected = model(x).double().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0].astype(np.float64)
        rel = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
        cosine = (got * expected).sum(1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1) + 1e-30
        )
        results.append(ParityResult(source, len(x), rel, float(cosine.min())))
    return results


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    real_images: ImageSource | None = None,
    opset: int | None = None,
    seed: int = 0,
) -> ExportReport:
    """Export a checkpoint's eval-mode network to ONNX and check it with onnxruntime.

    The graph maps ``images`` ``(batch, 3, height, width)`` to ``embeddings`` ``(batch, D)``,
    with ``batch`` dynamic; the weights are stored inside the one file. Parity with PyTorch (on
    CPU, float32) is checked at batch 1 and 7 on seeded random images and, when given, on the
    first seven ``real_images``. The file is written only when every check passes.

    Args:
        checkpoint: ``checkpoint.pt`` written by training (PMM or baseline).
        out: the ``.onnx`` file to write (its folder is created).
        real_images: images to check parity on, as :meth:`FeatureExtractor.extract` takes
            them (a folder, a list file, paths, PIL images or a preprocessed tensor).
        opset: ONNX opset, honoured or refused; default: the exporter's recommended one.
        seed: seed of the random images.

    Returns:
        The :class:`ExportReport` (path, metadata, parity figures).

    Raises:
        MissingExtraError: (an ImportError) the ``deploy`` extra is missing; the message says
            how to install it.
        ParityError: onnxruntime disagrees with PyTorch beyond the tolerance; ``out`` is left
            as it was (the rejected graph is kept as ``<out>.rejected`` for inspection).
        FileNotFoundError, ValueError: a bad checkpoint or bad ``real_images`` (as for
            :class:`FeatureExtractor`).
    """
    _require_deploy()
    check_opset(opset)
    import onnxruntime

    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"out must be an .onnx file, got {str(out)!r}")
    model, config = load_model(checkpoint, map_location="cpu")
    args = config.to_dict()
    height, width = int(args["height"]), int(args["width"])
    real = None
    if real_images is not None:
        extractor = FeatureExtractor(checkpoint, device="cpu")
        real = extractor.preprocess(real_images, limit=max(PARITY_BATCHES))
    generator = torch.Generator().manual_seed(seed)
    random_images = torch.randn(max(PARITY_BATCHES), 3, height, width, generator=generator)
    with torch.no_grad():
        embedding_dim = model(random_images[:1]).shape[1]

    with warnings.catch_warnings():
        # torch.export's notes on the tracing it does; the parity check below is what counts.
        warnings.simplefilter("ignore")
        # With dynamo=True and no file argument, export returns the ONNXProgram.
        program = cast(
            torch.onnx.ONNXProgram,
            torch.onnx.export(
                model,
                (random_images[:1],),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            ),
        )
    written = program.model.opset_imports.get("")
    if opset is not None and written != opset:
        raise ValueError(f"the exporter could not write opset {opset} (it produced {written})")
    metadata = _metadata(args, embedding_dim)
    program.model.metadata_props.update(metadata)
    staged = out.with_name(out.name + ".rejected")
    with atomic_path(staged) as tmp:
        program.save(str(tmp), external_data=False)

    session = onnxruntime.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
    parity = _parity(model, session, random_images, "random")
    if real is not None:
        parity += _parity(model, session, real, "real")
    if not all(r.ok for r in parity):
        earlier = f"the earlier {out} is kept" if out.exists() else f"{out} was not written"
        raise ParityError(
            f"onnxruntime disagrees with PyTorch; the graph is kept as {staged} and {earlier}:\n"
            + "\n".join(f"  {r}" for r in parity)
        )
    os.replace(staged, out)  # both fsynced files in one folder: atomic
    return ExportReport(out, metadata, parity)
