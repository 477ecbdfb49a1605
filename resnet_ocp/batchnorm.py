"""The network's batch norms: how they train (``BatchNormOptions``) and ghost batch norm.

None of it changes what a trained network is: the saved tensors are those of a plain
``BatchNorm2d``, so these options are not in ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BatchNormOptions:
    """How the batch norms train; none of it changes a trained network, so none is saved.

    Args:
        momentum: momentum of the running statistics.
        ghost_batch: normalise training batches in sub-batches of this many images (0: the
            whole batch; evaluation uses the running statistics).
        weight_freeze: weights stay at 1, untrained (biases still train): 2,240 fewer trainable
            parameters at width 64.
    """

    momentum: float = 0.1
    ghost_batch: int = 0
    weight_freeze: bool = False

    def make(self, channels: int) -> nn.BatchNorm2d:
        """A batch norm over ``channels`` as these options describe."""
        bn = GhostBatchNorm2d(channels, self.ghost_batch, momentum=self.momentum)
        bn.weight.requires_grad_(not self.weight_freeze)
        return bn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics come from sub-batches of ``ghost_batch`` images
    (Hoffer et al. 2017; Page uses 32 of 512): more noise in the statistics, which regularises.

    A batch of n = s x g images is normalised as s sub-batches, sub-batch k being images
    k, k + s, k + 2s, ...: one fused kernel over the batch viewed as n/s samples of s x C
    channels, as Page's ``GhostBatchNorm`` (5x faster here than one kernel per sub-batch: 0.68
    against 1.5 s forward + backward at [512, 128, 16, 16], channels_last, fp32), in the input's
    memory format. A batch not divisible by g (an epoch's last: 50,000 = 97 x 512 + 336) is cut
    into consecutive chunks.
    The running statistics move towards the mean of the sub-batches' statistics, so evaluation
    and the saved tensors are those of a plain ``BatchNorm2d`` (same keys). With ``ghost_batch``
    0, or a batch no larger, it is one.
    """

    def __init__(self, num_features: int, ghost_batch: int = 0, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.ghost_batch = ghost_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batch norm of ``x``: in training, over sub-batches of ``ghost_batch`` images when ``x``
        holds more; otherwise exactly ``BatchNorm2d``'s.

        Args:
            x: activations [N, C, H, W], NCHW or channels_last.
        """
        g, n, c = self.ghost_batch, x.shape[0], x.shape[1]
        if not self.training or g == 0 or n <= g:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        # momentum None: a cumulative average, as BatchNorm2d (torch's update_bn sets it so).
        momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
        if n % g:
            return self._chunked(x, momentum)
        s, h, w = n // g, x.shape[2], x.shape[3]
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)
        # Image j * s + k becomes sample j of channels k * C to k * C + C - 1 of a [g, s * C, H, W]
        # batch. The reshapes are views for NCHW input and, for channels_last, copies that move
        # whole C-vectors: 1.15 s a step for the 8 layers over plain BN, against 1.51 s through
        # NCHW copies (fp32, AVX2 EPYC; benchmarks/ghost_bn.py, docs/performance.md).
        xg = x.permute(0, 2, 3, 1).reshape(g, s, h, w, c).permute(0, 2, 3, 1, 4).reshape(g, h, w, s * c).permute(0, 3, 1, 2)
        y = F.batch_norm(xg, mean, var, self.weight.repeat(s), self.bias.repeat(s), True, momentum, self.eps)
        y = y.permute(0, 2, 3, 1).reshape(g, h, w, s, c).permute(0, 3, 1, 2, 4).reshape(n, h, w, c).permute(0, 3, 1, 2)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(s, c).mean(0))
            self.running_var.copy_(var.view(s, c).mean(0))
        return y

    def _chunked(self, x: torch.Tensor, momentum: float) -> torch.Tensor:
        chunks = x.split(self.ghost_batch)
        with torch.no_grad():
            stats = [torch.var_mean(chunk.detach().float(), dim=(0, 2, 3)) for chunk in chunks]
            self.running_mean.lerp_(torch.stack([m for _, m in stats]).mean(0), momentum)
            self.running_var.lerp_(torch.stack([v for v, _ in stats]).mean(0), momentum)
        return torch.cat([F.batch_norm(chunk, None, None, self.weight, self.bias, True, 0.0, self.eps) for chunk in chunks])
