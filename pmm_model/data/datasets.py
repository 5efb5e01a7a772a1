"""Re-identification datasets as they are distributed on disk, chosen by name.

Every loader returns a :class:`ReIDDataset`: three lists of :class:`Record`
``(img_path, pid, camid)``. Conventions shared by all loaders:

- Training pids are relabelled to ``0..P-1`` (sorted by original pid) so they can index a
  classifier; query and gallery keep their original pids, which evaluation only compares.
- Camera ids are parsed from the file names and made 0-based (``c1`` -> 0).
- Market naming (``PPPP_cC...``): pid -1 marks junk images and is dropped everywhere; pid 0
  marks distractors, kept in the gallery (they are valid non-matches) and dropped from train and
  query (they are not an identity). Number your own identities from 1 in a ``folder`` tree.
- A split that ends up empty is a ``ValueError`` naming the split and the folder, raised here,
  before any training starts.

Names: ``market1501``, ``dukemtmcreid``, ``cuhk03np`` (= ``cuhk03np-labeled``),
``cuhk03np-detected``, ``msmt17`` (V1 or V2), ``folder`` (any tree with
``bounding_box_train/``, ``bounding_box_test/`` and ``query/`` in Market naming) and
``synthetic`` (generated once by :mod:`pmm_model.data.synthetic`).

Adding your own layout takes a factory ``(root, **kwargs) -> ReIDDataset``::

    from pathlib import Path
    from pmm_model.data.datasets import build_dataset, read_market_tree, register_dataset

    def my_set(root):
        return read_market_tree(Path(root) / "my_set_v2", name="myset")

    register_dataset("myset", my_set)
    data = build_dataset("myset", "/data")
    print(data.summary())
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "ReIDDataset",
    "Record",
    "build_dataset",
    "check_protocol",
    "dataset_names",
    "read_market_tree",
    "register_dataset",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MARKET_SPLITS = ("bounding_box_train", "bounding_box_test", "query")
# Market, DukeMTMC-reID and CUHK03-NP all start with "<pid>_c<camera>"; the rest varies.
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


class Record(NamedTuple):
    """One image: its path, identity and 0-based camera. A plain tuple for unpacking."""

    img_path: str
    pid: int
    camid: int


@dataclass
class ReIDDataset:
    """The three splits of a re-identification dataset.

    ``num_train_pids`` and ``num_train_cams`` are derived from ``train``. Training pids must
    already be ``0..P-1`` (every loader here relabels them).

    Example:
        >>> data = ReIDDataset([Record("a.jpg", 0, 0)], [Record("q.jpg", 7, 0)],
        ...                    [Record("g.jpg", 7, 1)], name="toy")
        >>> data.num_train_pids, data.num_train_cams
        (1, 1)
    """

    train: list[Record]
    query: list[Record]
    gallery: list[Record]
    name: str = ""
    root: str = ""
    num_train_pids: int = field(init=False)
    num_train_cams: int = field(init=False)

    def __post_init__(self) -> None:
        pids = {r[1] for r in self.train}
        if pids and pids != set(range(len(pids))):
            raise ValueError(
                f"ReIDDataset {self.name!r}: train pids must be relabelled to 0..P-1, got "
                f"{len(pids)} ids in [{min(pids)}, {max(pids)}]"
            )
        self.num_train_pids = len(pids)
        self.num_train_cams = len({r[2] for r in self.train})

    def summary(self) -> str:
        """A small table of ids, images and cameras per split."""
        lines = [
            f"Dataset {self.name or '?'}" + (f" ({self.root})" if self.root else ""),
            f"  {'split':<8} {'ids':>7} {'images':>8} {'cameras':>8}",
        ]
        for split, records in (
            ("train", self.train),
            ("query", self.query),
            ("gallery", self.gallery),
        ):
            ids = len({r[1] for r in records})
            cams = len({r[2] for r in records})
            lines.append(f"  {split:<8} {ids:>7} {len(records):>8} {cams:>8}")
        return "\n".join(lines)


DatasetFactory = Callable[..., ReIDDataset]
_REGISTRY: dict[str, DatasetFactory] = {}


def register_dataset(name: str, factory: DatasetFactory, *, overwrite: bool = False) -> None:
    """Make ``build_dataset(name, root, **kwargs)`` call ``factory(root, **kwargs)``.

    Args:
        name: Case-insensitive dataset name.
        factory: Callable ``(root, **kwargs) -> ReIDDataset``.
        overwrite: Replace an existing registration instead of raising.

    Example:
        >>> register_dataset("mine", lambda root: read_market_tree(root, name="mine"))
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_dataset: name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(f"register_dataset: factory must be callable, got {type(factory)}")
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(
            f"register_dataset: {name!r} is already registered; pass overwrite=True to replace it"
        )
    _REGISTRY[key] = factory


def dataset_names() -> list[str]:
    """The names ``build_dataset`` accepts, sorted."""
    return sorted(_REGISTRY)


def build_dataset(name: str, root: str | Path | None = None, **kwargs: Any) -> ReIDDataset:
    """Load a dataset by name from ``root``.

    ``root`` may be the folder holding the distributed archive's folder (e.g. the parent of
    ``Market-1501-v15.09.15``) or that folder itself.

    Args:
        name: One of :func:`dataset_names` (case-insensitive).
        root: Dataset root; only ``synthetic`` works without one (it uses its cache).
        **kwargs: Passed to the dataset's factory.

    Returns:
        The loaded :class:`ReIDDataset`, every split non-empty.

    Raises:
        ValueError: Unknown name (the message lists the valid ones), an empty split, or a file
            name that does not follow the layout.
        FileNotFoundError: The expected folders or list files are missing.

    Example:
        >>> data = build_dataset("market1501", "/data")  # doctest: +SKIP
        >>> print(data.summary())  # doctest: +SKIP
    """
    factory = _REGISTRY.get(str(name).lower())
    if factory is None:
        raise ValueError(
            f"build_dataset: unknown dataset name {name!r}; valid names: "
            + ", ".join(dataset_names())
        )
    data = factory(root, **kwargs)
    if not isinstance(data, ReIDDataset):
        raise TypeError(
            f"build_dataset: the factory for {name!r} returned {type(data).__name__}, "
            "expected ReIDDataset"
        )
    for split in ("train", "query", "gallery"):
        if not getattr(data, split):
            raise ValueError(f"build_dataset: dataset {name!r} has an empty {split} split")
    check_protocol(data.query, data.gallery, f"dataset {name!r}")
    return data


def check_protocol(query: Sequence[Record], gallery: Sequence[Record], what: str) -> None:
    """Check that the Market-1501 protocol can score ``query`` against ``gallery``.

    A query's valid matches are gallery images of its identity from another camera (those
    from its own camera are junk). Queries without one are left out of the scores (a warning
    says how many); when no query has one, rank-1 and mAP are undefined: a ``ValueError``,
    raised when the data is loaded rather than at the first evaluation.

    Args:
        query: the query records.
        gallery: the gallery records.
        what: names the data in messages (e.g. ``"dataset 'folder'"``).

    Raises:
        ValueError: no query has a valid gallery match.
    """
    cameras: dict[int, set[int]] = {}
    for record in gallery:
        cameras.setdefault(record.pid, set()).add(record.camid)
    absent = sum(r.pid not in cameras for r in query)
    same_camera = sum(r.pid in cameras and not cameras[r.pid] - {r.camid} for r in query)
    if absent + same_camera == len(query):
        raise ValueError(
            f"{what}: no query has a valid gallery match (an image of its identity from "
            f"another camera), so rank-1 and mAP are undefined: of {len(query)} queries, "
            f"{same_camera} have matches from their own camera only and {absent} an identity "
            "the gallery lacks"
        )
    if absent + same_camera:
        logger.warning(
            "%s: %d of %d queries have no valid gallery match (%d from their own camera only, "
            "%d identities not in the gallery); they are left out of rank-1, mAP and mINP",
            what,
            absent + same_camera,
            len(query),
            same_camera,
            absent,
        )


# ----------------------------------------------------------------------------- helpers


def _require_root(root: str | Path | None, name: str) -> Path:
    if root is None:
        raise ValueError(f"dataset {name!r} needs a root folder, got root=None")
    return Path(root).expanduser()


def _locate(root: Path, candidates: Sequence[str], required: Sequence[str], name: str) -> Path:
    """The first of ``root/candidate`` that holds every ``required`` entry."""
    tried = [root / c if c else root for c in candidates]
    for folder in tried:
        if all((folder / r).exists() for r in required):
            return folder
    raise FileNotFoundError(
        f"dataset {name!r}: no folder holding {', '.join(required)} found; looked in "
        + ", ".join(str(t) for t in tried)
    )


def _list_images(folder: Path) -> list[str]:
    # Sorted so record order (and so train relabelling) is the same on every machine;
    # the extension filter skips the Thumbs.db some Market archives ship with.
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))


def _parse_market_folder(folder: Path, split: str) -> list[Record]:
    """Records of one Market-named folder; junk (pid -1) and, outside the gallery, distractors
    (pid 0) are dropped."""
    records: list[Record] = []
    dropped = 0
    for fname in _list_images(folder):
        match = MARKET_NAME.match(fname)
        if match is None:
            raise ValueError(
                f"{folder / fname}: file name does not follow the Market naming "
                "'<pid>_c<camera>...' (e.g. 0002_c1s1_000451_03.jpg)"
            )
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1 or (pid == 0 and split != "gallery"):
            dropped += 1
            continue
        if pid < 0 or cam < 1:
            raise ValueError(f"{folder / fname}: pid {pid} or camera {cam} out of range")
        records.append(Record(str(folder / fname), pid, cam - 1))
    if dropped:
        logger.info("%s: dropped %d junk/distractor images", folder, dropped)
    if not records:
        raise ValueError(f"{split} split is empty: no usable images in {folder}")
    return records


def _relabel(records: list[Record]) -> list[Record]:
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [Record(r.img_path, mapping[r.pid], r.camid) for r in records]


def read_market_tree(folder: str | Path, name: str = "folder") -> ReIDDataset:
    """Read a folder holding ``bounding_box_train/``, ``bounding_box_test/`` and ``query/``
    with Market-style file names (``<pid>_c<camera>...``).

    Args:
        folder: The folder holding the three split folders.
        name: Name stored in the returned dataset.

    Example:
        >>> data = read_market_tree("/data/my_tree")  # doctest: +SKIP
    """
    folder = _locate(Path(folder).expanduser(), [""], MARKET_SPLITS, name)
    train = _parse_market_folder(folder / "bounding_box_train", "train")
    query = _parse_market_folder(folder / "query", "query")
    gallery = _parse_market_folder(folder / "bounding_box_test", "gallery")
    return ReIDDataset(_relabel(train), query, gallery, name=name, root=str(folder))


def _market_like(name: str, candidates: Sequence[str]) -> DatasetFactory:
    def factory(root: str | Path | None) -> ReIDDataset:
        folder = _locate(_require_root(root, name), candidates, MARKET_SPLITS, name)
        return read_market_tree(folder, name=name)

    factory.__doc__ = f"Load {name} from ``root`` (looked for in: {', '.join(candidates)})."
    return factory


def _folder(root: str | Path | None) -> ReIDDataset:
    """Any ``root`` holding the three Market split folders, in Market naming."""
    return read_market_tree(_require_root(root, "folder"))


def _synthetic(root: str | Path | None = None, **kwargs: Any) -> ReIDDataset:
    """The generated Market-layout set of :func:`pmm_model.data.synthetic.ensure_synthetic`."""
    # Imported here so the real-data loaders do not depend on the generator module.
    from pmm_model.data.synthetic import ensure_synthetic

    return read_market_tree(ensure_synthetic(root, **kwargs), name="synthetic")


# MSMT17 ships two releases that differ only in folder names; the list files are the same.
_MSMT_VERSIONS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}
_MSMT_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


def _read_msmt_list(list_file: Path, image_dir: Path) -> list[Record]:
    records = []
    with open(list_file, encoding="utf-8-sig") as f:  # a BOM is not part of the first path
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            fname = os.path.basename(parts[0])
            fields = fname.split("_")
            # <pid>_<index>_<camera 01..15>_<date/time>_....jpg; the list's pid is authoritative.
            if (
                len(parts) != 2
                or len(fields) < 3
                or not (parts[1].isdigit() and fields[2].isdigit())
            ):
                raise ValueError(
                    f"{list_file}:{line_no}: expected '<dir>/<pid>_<n>_<camera>_....jpg <pid>', "
                    f"got {line.strip()!r}"
                )
            records.append(Record(str(image_dir / parts[0]), int(parts[1]), int(fields[2]) - 1))
    return records


def _msmt17(root: str | Path | None, version: str | None = None) -> ReIDDataset:
    """MSMT17 V1 or V2 from its list files.

    Training uses ``list_train.txt`` and ``list_val.txt`` merged: the validation images are
    training identities, and merging them is the conventional MSMT17 training set (32,621
    images of 1,041 ids). The release is detected from its folder names; pass
    ``version="V1"`` or ``"V2"`` when both are under ``root``.
    """
    base = _require_root(root, "msmt17")
    found = {}
    versions = [version.upper()] if version else list(_MSMT_VERSIONS)
    for v in versions:
        if v not in _MSMT_VERSIONS:
            raise ValueError(f"msmt17: version must be 'V1' or 'V2', got {version!r}")
        dirs = _MSMT_VERSIONS[v]
        for cand in ("", f"MSMT17_{v}", "MSMT17", f"msmt17/MSMT17_{v}"):
            folder = base / cand if cand else base
            if all((folder / d).is_dir() for d in dirs) and (folder / _MSMT_LISTS[0]).is_file():
                found[v] = folder
                break
    if not found:
        raise FileNotFoundError(
            f"dataset 'msmt17': under {base} expected MSMT17_V1/{{train,test}}/ or "
            f"MSMT17_V2/{{mask_train_v2,mask_test_v2}}/ with {', '.join(_MSMT_LISTS)}"
        )
    if len(found) > 1:
        raise ValueError(
            f"msmt17: both V1 ({found['V1']}) and V2 ({found['V2']}) found; pass version='V1' "
            "or version='V2'"
        )
    v, folder = next(iter(found.items()))
    missing = [lst for lst in _MSMT_LISTS if not (folder / lst).is_file()]
    if missing:
        raise FileNotFoundError(f"msmt17: {folder} lacks {', '.join(missing)}")
    train_dir, test_dir = (folder / d for d in _MSMT_VERSIONS[v])
    train = _read_msmt_list(folder / "list_train.txt", train_dir)
    train += _read_msmt_list(folder / "list_val.txt", train_dir)
    query = _read_msmt_list(folder / "list_query.txt", test_dir)
    gallery = _read_msmt_list(folder / "list_gallery.txt", test_dir)
    for split, records, lists in (
        ("train", train, "list_train.txt and list_val.txt"),
        ("query", query, "list_query.txt"),
        ("gallery", gallery, "list_gallery.txt"),
    ):
        if not records:
            raise ValueError(f"msmt17: {split} split is empty: no entries in {folder}/{lists}")
    return ReIDDataset(_relabel(train), query, gallery, name=f"msmt17 ({v})", root=str(folder))


register_dataset(
    "market1501",
    _market_like(
        "market1501",
        [
            "",
            "Market-1501-v15.09.15",
            "Market-1501",
            "market1501",
            "market1501/Market-1501-v15.09.15",
        ],
    ),
)
register_dataset(
    "dukemtmcreid",
    _market_like("dukemtmcreid", ["", "DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID"]),
)
for _variant in ("labeled", "detected"):
    register_dataset(
        f"cuhk03np-{_variant}",
        _market_like(f"cuhk03np-{_variant}", [_variant, f"cuhk03-np/{_variant}"]),
    )
register_dataset("cuhk03np", _REGISTRY["cuhk03np-labeled"])
register_dataset("msmt17", _msmt17)
register_dataset("folder", _folder)
register_dataset("synthetic", _synthetic)
