"""Action-driven motion prior: each target frame's action -> one global affine motion of the copy-prior anchor.

Why: the copy prior (astra/diffusion/flow.py) lets a network that outputs 0 reproduce the newest history frame, so
a small model learns "what changes" as a residual. Most of what an action changes in these worlds is a global
image motion (a turn shifts the view, walking forward zooms it); a linear map from the (normalised) action to
(shift x, shift y, log zoom) of the anchor makes the generated chunk move the way the action says. The map reads
the raw actions, not the trainable action projectors, so it keeps its meaning while the projectors train; it is
fitted on its own objective before training (astra/train/motion_fit.py) and starts at zero (the plain copy prior),
so switching it on keeps a trained model's function.
"""

from __future__ import annotations

import torch
from torch import nn

from astra.actions.modalities import get_modality
from astra.model.action_experts import ActionInput, standardised_by_modality
from astra.model.config import AstraConfig

MOTION_PARAMETERS = 3  # shift x, shift y (grid units: 2 / width is one latent pixel), log zoom


class MotionPrior(nn.Module):
    def __init__(self, config: AstraConfig):
        super().__init__()
        self.steps = nn.ModuleDict(
            {name: nn.Linear(get_modality(name).width, MOTION_PARAMETERS) for name in config.modalities}
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for step in self.steps.values():
            nn.init.zeros_(step.weight)
            nn.init.zeros_(step.bias)

    def forward(self, actions: ActionInput, normalizers: nn.ModuleDict | None = None) -> torch.Tensor:
        """Raw actions of the target frames -> motion of each frame from the anchor [B, Ft, 3]. `normalizers` are
        the action projectors' (the same standardisation). The per-frame steps accumulate, so frame k of a chunk
        has moved by the actions of frames 1..k; a null (dropped) action does not move."""
        batch_size, num_frames = actions.values.shape[:2]
        weight = next(self.parameters())  # the standardised values are float32; a bf16 model's weights are not
        actions = actions.to(weight.device)
        steps = actions.values.new_zeros(batch_size, num_frames, MOTION_PARAMETERS, dtype=torch.float32)
        for name, rows, values in standardised_by_modality(actions, normalizers):
            steps[rows] = self.steps[name](values.to(weight.dtype)).float()
        if actions.null is not None:
            steps = steps.masked_fill(actions.null[..., None].to(torch.bool), 0.0)
        return steps.cumsum(dim=1)
