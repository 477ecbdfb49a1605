"""Training augmentation, batched on the training device: RandomCrop(32, pad 4), flip, Cutout.

Batched tensor ops do crop+flip+cutout about ten times faster than per-image PIL transforms in
DataLoader workers (benchmarks/throughput.py, measurement (d); docs/performance.md) and run
wherever the data already is (the GPU, on a GPU machine), so the input pipeline is never the wall.

Randomness is a pure function of (seed, epoch, sample index): ``epoch_params`` draws every
sample's crop offset, flip and cutout position for a whole epoch at once. A sample is
augmented identically however many processes share the work and whether or not the run
was resumed, and two different samples never share a draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

AUGMENT_STREAM = 1
SHUFFLE_STREAM = 0


def derived_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for one (seed, epoch, stream) triple, via numpy's SeedSequence mixing.

    Args:
        seed: the run's seed.
        epoch: the epoch (any integer).
        stream: which draws the seed is for (``SHUFFLE_STREAM`` or ``AUGMENT_STREAM``).
    """
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(2, dtype=np.uint64)[0] >> 1)


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample draws: crop offsets ``dx``/``dy`` in [0, 2*pad], ``flip`` and cutout corner."""

    dx: torch.Tensor
    dy: torch.Tensor
    flip: torch.Tensor
    cut_top: torch.Tensor
    cut_left: torch.Tensor

    def __getitem__(self, idx: torch.Tensor) -> AugmentParams:
        return AugmentParams(*(t[idx] for t in self._tensors()))

    def to(self, device: torch.device | str) -> AugmentParams:
        """The same draws on ``device``.

        Args:
            device: where the tensors go (the training device).
        """
        return AugmentParams(*(t.to(device) for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.dx, self.dy, self.flip, self.cut_top, self.cut_left)


def epoch_params(n: int, seed: int, epoch: int, padding: int = 4, cutout: int = 8, flip: bool = True, size: int = 32) -> AugmentParams:
    """Draw the augmentation of every one of ``n`` samples for one epoch.

    Args:
        n: number of training samples.
        seed: the run's seed.
        epoch: the epoch (any integer; each gives independent draws).
        padding: crop padding p; offsets are uniform in [0, 2p].
        cutout: side of the cut square; its top-left corner is uniform so the square lies
            fully inside the image (always exactly cutout**2 pixels cut).
        flip: whether to flip half of the samples horizontally.
        size: image side.
    """
    g = torch.Generator().manual_seed(derived_seed(seed, epoch, AUGMENT_STREAM))
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=g)
    flips = torch.rand(n, generator=g) < 0.5
    corner = max(size - cutout, 0) + 1
    top = torch.randint(0, corner, (n,), generator=g)
    left = torch.randint(0, corner, (n,), generator=g)
    if not flip:
        flips = torch.zeros(n, dtype=torch.bool)
    return AugmentParams(dx, dy, flips, top, left)


def random_crop(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, padding: int, mode: str = "zero") -> torch.Tensor:
    """Pad by ``padding`` (zeros, as torchvision's RandomCrop, or ``mode="reflect"``, as Page's
    and airbench's loaders) and crop back to the input size at per-sample offsets.

    ``out[b, :, i, j] == padded[b, :, i + dy[b], j + dx[b]]``.

    Args:
        x: images [B, C, H, W].
        dx: per-sample column offsets [B], in [0, 2*padding].
        dy: per-sample row offsets [B], in [0, 2*padding].
        padding: pixels padded on each side (0: ``x`` is returned as it is).
        mode: "zero" or "reflect".
    """
    if padding == 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4, mode="reflect" if mode == "reflect" else "constant")
    rows = (dy[:, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * padding)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return out.gather(3, cols)


def random_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the samples where ``flip`` is True."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def cutout(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int, fill: float = 0.0) -> torch.Tensor:
    """Set a ``size`` x ``size`` square at (top, left) of every sample to ``fill``.

    Args:
        x: images [B, C, H, W].
        top: per-sample row of the square's top-left corner [B].
        left: per-sample column of that corner [B].
        size: side of the square in pixels (0: none); a square past the edge is clipped.
        fill: the value written.
    """
    if size == 0:
        return x
    h, w = x.shape[-2:]
    r = torch.arange(h, device=x.device)
    c = torch.arange(w, device=x.device)
    in_rows = (r >= top[:, None]) & (r < top[:, None] + size)
    in_cols = (c >= left[:, None]) & (c < left[:, None] + size)
    mask = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
    return x.masked_fill(mask, fill)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] to float32 standardised with per-channel ``mean``/``std`` (fractions of 255).

    Args:
        x: uint8 images [B, 3, H, W].
        mean: per-channel mean [3], fractions of 255.
        std: per-channel standard deviation [3], fractions of 255.
    """
    return (x.float().div_(255) - mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def augment_batch(x: torch.Tensor, p: AugmentParams, mean: torch.Tensor, std: torch.Tensor, padding: int, cutout_size: int,
                  pad_mode: str = "zero") -> torch.Tensor:
    """Crop, flip, normalise, then cut out (filled with 0 = the dataset mean after normalising).

    Args:
        x: uint8 images [B, 3, H, W] on the training device.
        p: the draws of exactly these samples (``epoch_params(...)[indices]``).
        mean: per-channel mean, fractions of 255.
        std: per-channel std, fractions of 255.
        padding: crop padding.
        cutout_size: side of the cut square (0: none).
        pad_mode: "zero" or "reflect" padding of the crop.
    """
    x = random_flip(random_crop(x, p.dx, p.dy, padding, pad_mode), p.flip)
    return cutout(normalize(x, mean, std), p.cut_top, p.cut_left, cutout_size)
