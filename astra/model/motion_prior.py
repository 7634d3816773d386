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
FLOW_CHANNELS = 2  # anchor displacement (x, y) in latent pixels


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


class AnchorFlow(nn.Module):
    """A displacement of the copy-prior anchor per latent pixel, read from the network's last hidden states.

    `free`: a Linear head, any flow the features ask for. With `from_actions`, each latent pixel also moves by a
    linear map of the frame's (standardised) action whose matrix the features give, per modality: flow(p) = M(p) a.
    Why: a free flow must learn the product "this token is the arm" x "the action moves the arm left" inside the
    network, which a small network reading actions through additive embeddings did not learn (docs/results.md,
    session 40); here the product is built in, and the matrix can depend on the view (a robot camera's yaw
    turns which way the arm moves for the same command). Every output starts at zero, so switching it on keeps a
    trained model's function.
    """

    def __init__(self, config: AstraConfig):
        super().__init__()
        self.pixels_per_token = config.patch_size[0] * config.patch_size[1] * config.patch_size[2]
        self.free = nn.Linear(config.dim, FLOW_CHANNELS * self.pixels_per_token)
        self.maps = None
        if config.anchor_flow_from_actions:
            self.maps = nn.ModuleDict(
                {
                    name: nn.Linear(config.dim, FLOW_CHANNELS * get_modality(name).width * self.pixels_per_token)
                    for name in config.modalities
                }
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self,
        features: torch.Tensor,
        unpatchify,
        actions: ActionInput | None,
        normalizers: nn.ModuleDict | None = None,
    ) -> torch.Tensor:
        """features [B, N, dim] of the target tokens; `unpatchify(tokens, channels)` -> [B, channels, Ft, H, W];
        `actions` of the target frames. Returns the flow [B, 2, Ft, H, W] in latent pixels (x, y)."""
        flow = unpatchify(self.free(features), FLOW_CHANNELS).float()
        if self.maps is None or actions is None:
            return flow
        actions = actions.to(features.device)
        moved = torch.zeros_like(flow)
        for name, rows, values in standardised_by_modality(actions, normalizers):
            if actions.null is not None:  # a null (dropped) action does not move
                values = values.masked_fill(actions.null[rows][..., None].to(torch.bool), 0.0)
            values = values.cumsum(dim=1)  # frame k of a chunk has moved by the actions of frames 1..k, as the prior
            width = values.shape[-1]
            maps = unpatchify(self.maps[name](features[rows]), FLOW_CHANNELS * width).float()
            maps = maps.unflatten(1, (FLOW_CHANNELS, width))  # [rows, 2, width, Ft, H, W]
            moved[rows] = torch.einsum("bcwfyx,bfw->bcfyx", maps, values)
        return flow + moved
