"""Input patch whitening: a fixed 3x3 convolution that decorrelates the training images' 3x3 patches.

From David Page's "How to train your ResNet 8: Bag of tricks", on this very network: the
filters are the eigenvectors of the covariance of every 3x3x3 patch of the (normalised)
training images, each divided by the square root of its eigenvalue, so the 27 output
channels are uncorrelated with unit variance over the training patches. The layer has no
trainable parameters; the 1x1 convolution after it (27 -> 64) has the 1,728 weights that the
3x3 prep convolution (3 x 3 x 3 x 64) had, so the trainable count stays 6,573,130.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PATCH = 3
# Page's regulariser: eigenvalues below ~1e-2 (noise directions of the normalised images) are not blown up.
EIGEN_EPS = 1e-2
# Page fitted the filters on 10,000 training images; 9M patches pin down a 27x27 covariance.
FIT_IMAGES = 10_000


class PatchWhitening(nn.Module):
    """Fixed 3x3 convolution, ``channels`` -> ``channels * 9``, padding 1 (the resolution is kept).

    The filters are a buffer (saved with the weights, never trained), zero until ``fit``.

    Args:
        channels: input channels (3 for RGB).
    """

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        n = channels * PATCH * PATCH
        self.register_buffer("weight", torch.zeros(n, channels, PATCH, PATCH))

    @property
    def out_channels(self) -> int:
        """Output channels: ``channels * 9`` (27 for RGB)."""
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whitened 3x3 patches of ``x``, [N, C*9, H, W].

        Args:
            x: normalised float images [N, C, H, W].
        """
        return F.conv2d(x, self.weight, padding=PATCH // 2)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, batch_size: int = 1000) -> None:
        """Set the filters from normalised float images [N, C, H, W] (the first ``FIT_IMAGES``).

        Args:
            images: the training images, normalised as the network sees them.
            batch_size: images per covariance chunk (bounds the memory of the unfolded patches).
        """
        self.weight.copy_(whitening_filters(images[:FIT_IMAGES], batch_size).to(self.weight))


def whitening_filters(images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The whitening filters [C*9, C, 3, 3] of the 3x3 patches of ``images``, largest eigenvalue first.

    The covariance is accumulated in float64 over chunks and is not centred (the images are
    normalised to zero mean per channel), as in Page's code.

    Args:
        images: normalised float images [N, C, H, W].
        batch_size: images per chunk.
    """
    c = images.shape[1]
    d = c * PATCH * PATCH
    cov = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for chunk in images.split(batch_size):
        # [B, C, H-2, W-2, 3, 3] -> one row per patch, in the (c, kh, kw) order of a conv weight
        patches = chunk.double().cpu().unfold(2, PATCH, 1).unfold(3, PATCH, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, d)
        cov += patches.T @ patches
        count += len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov / (count - 1))
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
    filters = eigenvectors / torch.sqrt(eigenvalues + EIGEN_EPS)[:, None]
    return filters.reshape(d, c, PATCH, PATCH).float()
