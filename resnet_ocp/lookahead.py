"""Lookahead as airbench uses it: the weights are pulled back to a slow average every few steps.

Keller Jordan's airbench94 (PyPI ``airbench``) keeps a copy of the network's floating-point
state; every 5 optimizer steps the copy moves towards the live weights,
``slow <- slow + (1 - decay) * (fast - slow)``, and the live weights are then set to it. The
decay grows as ``0.95**5 * (step / total)**3``: near 0 early (the copy follows the live
weights, Lookahead does nothing), 0.77 at the last step, where the live weights finally take
the slow copy itself. Unlike ``--ema`` the average is not only evaluated: training continues
from it, so the batch-norm statistics stay consistent with the weights (they are averaged too).
"""

from __future__ import annotations

import torch

EVERY = 5
# airbench94: decay 0.95 per step, applied over 5 steps at a time.
BASE_DECAY = 0.95**EVERY


class Lookahead:
    """The slow copy of a model's floating-point state and its update schedule.

    Args:
        model: the (unwrapped) network whose parameters and float buffers are averaged.
        total_steps: optimizer steps of the whole run (the schedule's length).
    """

    def __init__(self, model: torch.nn.Module, total_steps: int) -> None:
        self.total_steps = total_steps
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def decay(self, step: int) -> float:
        """The slow copy's decay at 1-based optimizer ``step``."""
        return BASE_DECAY * (step / self.total_steps) ** 3

    @torch.no_grad()
    def step(self, model: torch.nn.Module, step: int) -> None:
        """Apply the update due after optimizer ``step`` (1-based): every ``EVERY`` steps, and at
        the run's last step the final one, which leaves the model on the slow copy.

        Args:
            model: the (unwrapped) network, updated in place.
            step: optimizer steps done in the run.
        """
        if step % EVERY == 0:
            self._update(model, self.decay(step))
        if step == self.total_steps:
            self._update(model, 1.0)

    def _update(self, model: torch.nn.Module, decay: float) -> None:
        state = model.state_dict()
        for name, slow in self.slow.items():
            slow.lerp_(state[name].to(slow.dtype), 1 - decay)
            state[name].copy_(slow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The slow copy, by state-dict key (saved with each checkpoint)."""
        return self.slow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the slow copy from ``state_dict()``'s tensors.

        Args:
            state: tensors by key, as saved.
        """
        for name, slow in self.slow.items():
            slow.copy_(state[name])
