"""Action-driven motion prior: each target frame's action -> one global affine motion of the copy-prior anchor.

Why: the copy prior (astra/diffusion/flow.py) lets a network that outputs 0 reproduce the newest history frame, so
a small model learns "what changes" as a residual. Most of what an action changes in these worlds is a global
image motion (a turn shifts the view, walking forward zooms it); a residual network learns that slowly, while a
linear map from the action to (shift x, shift y, log zoom) of the anchor learns it in a few hundred steps and
makes the generated chunk move the way the action says from the first step. The map starts at zero (the plain
copy prior), so switching it on keeps a trained model's function.
"""

from __future__ import annotations

import torch
from torch import nn

from astra.model.config import AstraConfig

MOTION_PARAMETERS = 3  # shift x, shift y (grid units: 2 / width is one latent pixel), log zoom


class MotionPrior(nn.Module):
    def __init__(self, config: AstraConfig):
        super().__init__()
        self.proj = nn.Linear(config.action_space_dim + 1, MOTION_PARAMETERS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, target_features: torch.Tensor) -> torch.Tensor:
        """Projected actions of the target frames [B, Ft, A+1] -> motion of each frame from the anchor [B, Ft, 3]:
        the per-frame steps accumulate, so frame k of a chunk has moved by the actions of frames 1..k."""
        return self.proj(target_features).float().cumsum(dim=1)
