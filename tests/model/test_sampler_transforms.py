"""Tests of the PK sampler and the image transforms."""

from collections import Counter

import pytest
import torch
import torchvision.transforms as T
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pmm_model.data.sampler import PKSampler
from pmm_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Cutout, build_transforms


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 9), min_size=2, max_size=12),
    p=st.integers(2, 4),
    k=st.integers(1, 5),
    seed=st.integers(0, 3),
)
def test_every_batch_has_p_ids_with_k_images(counts, p, k, seed):
    pids = [pid for pid, count in enumerate(counts) for _ in range(count)]
    if len(counts) < p:
        with pytest.raises(ValueError, match=f"p={p} identities"):
            PKSampler(pids, p, k, seed)
        return
    sampler = PKSampler(pids, p, k, seed)
    batches = list(sampler)
    assert len(batches) == len(sampler) >= 1
    used = Counter()
    for batch in batches:
        per_id = Counter(pids[i] for i in batch)
        assert len(batch) == p * k and len(per_id) == p and set(per_id.values()) == {k}
        used.update(batch)
    # Without replacement an image appears at most once; small ids are drawn with replacement.
    assert all(n == 1 for i, n in used.items() if counts[pids[i]] >= k)
    # Every id yields max(1, count // k) chunks; batches stop when fewer than p ids remain.
    chunks = sum(max(1, c // k) for c in counts)
    assert len(batches) * p <= chunks


def test_sampler_is_reproducible_per_epoch():
    pids = [i // 6 for i in range(60)]
    a, b = PKSampler(pids, 4, 3, seed=1), PKSampler(pids, 4, 3, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(PKSampler(pids, 4, 3, seed=2)) != first


def test_sampler_rejects_bad_p_and_k():
    with pytest.raises(ValueError, match="p must be an int >= 2, got 1"):
        PKSampler([0, 1], 1, 4)
    with pytest.raises(ValueError, match="images_per_id must be an int >= 1, got 0"):
        PKSampler([0, 1], 2, 0)


def test_train_and_test_transforms():
    image = Image.new("RGB", (50, 100), (255, 128, 0))
    train = build_transforms(128, 64, is_train=True, random_erasing=True)
    assert train(image).shape == (3, 128, 64)
    kinds = [type(t) for t in train.transforms]
    assert kinds == [
        T.Resize,
        T.RandomHorizontalFlip,
        T.ToTensor,
        T.Normalize,
        Cutout,
        T.RandomErasing,
    ]
    assert train.transforms[4].size == (21, 32)  # 64x64 at 384x128, scaled
    test = build_transforms(128, 64, is_train=False)
    assert [type(t) for t in test.transforms] == [T.Resize, T.ToTensor, T.Normalize]
    out = test(image)
    assert torch.equal(out, test(image))
    expected = (torch.tensor([255, 128, 0]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    torch.testing.assert_close(out[:, 0, 0], expected)
    assert not any(
        isinstance(t, Cutout) for t in build_transforms(64, 32, True, cutout=False).transforms
    )


def test_cutout_hole_size_clipping_and_probability():
    torch.manual_seed(0)
    cut = Cutout((64, 64), p=1.0)
    zeros = [int((cut(torch.ones(3, 384, 128))[0] == 0).sum()) for _ in range(200)]
    assert max(zeros) == 64 * 64 and 0 < min(zeros) < 64 * 64  # full hole, or clipped at edges
    never = Cutout((4, 4), p=0.0)
    img = torch.ones(3, 8, 8)
    assert never(img) is img
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 2"):
        Cutout((4, 4), p=2)
