"""Augmentation properties: what moved where, which pixels were cut, and where randomness comes from."""

import torch

from resnet_ocp.augment import augment_batch, cutout, epoch_params, normalize, random_crop, random_flip
from resnet_ocp.data import CIFAR10_MEAN, CIFAR10_STD

MEAN, STD = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)


def images(n=6, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_crop_moves_pixels_by_the_drawn_offset_with_zero_padding():
    """out[b, :, i, j] == padded[b, :, i + dy, j + dx] for every sample and pixel."""
    x = images()
    dx = torch.tensor([0, 8, 4, 1, 7, 3])
    dy = torch.tensor([8, 0, 4, 2, 5, 6])
    out = random_crop(x, dx, dy, 4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for b in range(6):
        torch.testing.assert_close(out[b], padded[b, :, dy[b]:dy[b] + 32, dx[b]:dx[b] + 32])
    # Offset (4, 4) is the identity; (dx 0, dy 8) shifts the image up-right, bringing in zero
    # rows at the bottom and zero columns at the left; (dx 8, dy 0) the opposite corner.
    torch.testing.assert_close(out[2], x[2])
    assert (out[0, :, 28:, :] == 0).all() and (out[0, :, :, :4] == 0).all()
    torch.testing.assert_close(out[0, :, :28, 4:], x[0, :, 4:, :28])
    assert (out[1, :, :4, :] == 0).all() and (out[1, :, :, 28:] == 0).all()


def test_flip_mirrors_only_the_chosen_samples():
    """Flagged samples are mirrored left-right; the others are untouched."""
    x = images(4)
    flags = torch.tensor([True, False, True, False])
    out = random_flip(x, flags)
    torch.testing.assert_close(out[0], x[0].flip(-1))
    torch.testing.assert_close(out[1], x[1])
    assert torch.equal(out[2, :, :, 0], x[2, :, :, 31])


def test_cutout_sets_exactly_the_square_to_fill():
    """Exactly size*size pixels per channel, at rows top..top+7 and cols left..left+7, become the fill."""
    x = torch.randn(3, 3, 32, 32) + 10  # nothing is zero before the cut
    top, left = torch.tensor([0, 24, 10]), torch.tensor([24, 0, 13])
    out = cutout(x, top, left, 8, fill=0.0)
    for b in range(3):
        cut = out[b] == 0
        assert cut.sum() == 3 * 64
        expected = torch.zeros(32, 32, dtype=torch.bool)
        expected[top[b]:top[b] + 8, left[b]:left[b] + 8] = True
        assert torch.equal(cut[0], expected) and torch.equal(cut[2], expected)
        torch.testing.assert_close(out[b][:, ~expected], x[b][:, ~expected])


def test_params_are_per_sample_in_range_and_reproducible():
    """Draws are uniform over their ranges, differ between samples and epochs, repeat under a seed."""
    p = epoch_params(50_000, seed=0, epoch=1)
    assert p.dx.min() == 0 and p.dx.max() == 8 and p.dy.min() == 0 and p.dy.max() == 8
    assert p.cut_top.min() == 0 and p.cut_top.max() == 24 and p.cut_left.max() == 24
    assert 0.48 < p.flip.float().mean() < 0.52
    # 9 * 9 * 25 * 25 = 50,625 (dx, dy, top, left) draws: 50,000 uniform samples hit about 31,700 of them.
    assert torch.unique(torch.stack([p.dx, p.dy, p.cut_top, p.cut_left]), dim=1).shape[1] > 25_000
    again = epoch_params(50_000, seed=0, epoch=1)
    other_epoch = epoch_params(50_000, seed=0, epoch=2)
    other_seed = epoch_params(50_000, seed=1, epoch=1)
    assert torch.equal(p.dx, again.dx) and torch.equal(p.cut_left, again.cut_left)
    assert (p.dx != other_epoch.dx).float().mean() > 0.8
    assert (p.dx != other_seed.dx).float().mean() > 0.8


def test_a_sample_is_augmented_the_same_whatever_batch_or_process_holds_it():
    """Randomness is keyed by sample index, so sharding a batch across processes (or a resume)
    gives each sample the same augmentation as the 1-process run."""
    x = images(8)
    p = epoch_params(8, seed=3, epoch=5)
    whole = augment_batch(x, p, MEAN, STD, 4, 8)
    idx_a, idx_b = torch.tensor([0, 2, 4, 6]), torch.tensor([7, 5, 3, 1])
    part_a = augment_batch(x[idx_a], p[idx_a], MEAN, STD, 4, 8)
    part_b = augment_batch(x[idx_b], p[idx_b], MEAN, STD, 4, 8)
    torch.testing.assert_close(part_a, whole[idx_a])
    torch.testing.assert_close(part_b, whole[idx_b])
    # Different samples do get different draws.
    assert not torch.equal(whole[0], whole[1])


def test_normalize_and_cutout_fill_the_mean():
    """Normalisation maps the CIFAR-10 mean colour to 0, so the cut square equals the mean."""
    mean_pixel = (MEAN * 255).round().to(torch.uint8).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    assert normalize(mean_pixel, MEAN, STD).abs().max() < 0.01
    out = augment_batch(images(2), epoch_params(2, 0, 1), MEAN, STD, 4, 8)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 32, 32)
    assert ((out == 0).all(1).sum((1, 2)) >= 64).all()
