"""Fit the motion prior on its own objective before training: the newest history frame, moved by the action's
motion, should match the target frame.

Why: through the flow loss the motion prior's gradient is noise-dominated at small batch (800 CPU steps at batch
16 moved it by a twentieth of a latent pixel), and a network already trained with the plain copy prior pulls it
back to zero. Its own objective has a clean gradient and a few weights per modality, so it is fitted here in
seconds and then frozen (astra/train/trainer.py). On the shipped model's data (2,048 training frames) the fit lowers
the copy anchor's error by 47 % (camera), 23 % (drive), 11 % (robot) and 11 % (doom).
"""

from __future__ import annotations

import math

import torch

from astra.actions.align import identity_action
from astra.diffusion.flow import copy_anchor
from astra.diffusion.guidance import concat_actions
from astra.errors import AstraError
from astra.model.action_experts import ActionInput, standardised_by_modality
from astra.train.batches import BatchSource

MOTION_FIT_LR = 3e-3  # Adam refinement from the least-squares start, cosine-decayed to 0 over the iterations
RIDGE = 1e-3  # of the least-squares start, relative to the mean squared input


def best_pixel_shifts(newest: torch.Tensor, target: torch.Tensor, radius: int) -> torch.Tensor:
    """Per target frame, the whole-latent-pixel shift (grid units) of `newest` `[N, C, 1, H, W]` that best matches
    `target` `[N, C, Ft, H, W]` -> `[N, Ft, 2]`. Whole pixels copy values exactly, so no candidate wins by blurring
    (a gradient fit from zero can: sub-pixel shifts average, and averages have lower error)."""
    count, _, frames, height, width = target.shape
    best_error = torch.full((count, frames), math.inf, device=target.device)
    best = torch.zeros(count, frames, 2, device=target.device)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shift = torch.tensor([2.0 * dx / width, 2.0 * dy / height, 0.0], device=target.device)
            error = ((copy_anchor(newest, shift.expand(count, frames, 3)) - target) ** 2).mean(dim=(1, 3, 4))
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best[better] = shift[:2]
    return best


def still_inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each modality's still action (`identity_action`: no key, identity pose, zero deltas) as the prior reads it."""
    normalizers = model.action_projectors.normalizers
    weight = next(model.motion_prior.parameters())
    still = {}
    for name in model.motion_prior.steps:
        values = torch.from_numpy(identity_action(name)).to(weight.device)[None, None]
        still[name] = (normalizers[name](values) if normalizers is not None else values)[0, 0].to(weight.dtype)
    return still


@torch.no_grad()
def zero_still_motion(model: torch.nn.Module, still: dict[str, torch.Tensor]) -> None:
    """Set each step's bias so that the still action gives no motion: b = -W s."""
    for name, layer in model.motion_prior.steps.items():
        layer.bias.copy_(-(layer.weight @ still[name]))


@torch.no_grad()
def least_squares_start(
    model: torch.nn.Module, actions: ActionInput, shifts: torch.Tensor, still: dict[str, torch.Tensor]
) -> None:
    """Set each modality's per-frame shift step to the ridge regression of the best whole-pixel shifts' steps on
    its normalised actions' offsets from the still action, with no intercept (convex: no wrong basin; no input,
    no motion); zoom starts at 0. Null (dropped) frames do not take part."""
    steps = torch.diff(shifts, dim=1, prepend=torch.zeros_like(shifts[:, :1]))
    model.motion_prior.reset_parameters()  # a modality absent from the batches stays at zero
    for name, rows, values in standardised_by_modality(actions, model.action_projectors.normalizers):
        layer = model.motion_prior.steps[name]
        kept = torch.ones(values.shape[:2], dtype=torch.bool, device=values.device)
        if actions.null is not None:
            kept = ~actions.null[rows].to(torch.bool)
        inputs = (values - still[name].to(values))[kept].double()
        gram = inputs.T @ inputs
        ridge = RIDGE * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        solution = torch.linalg.solve(gram + ridge, inputs.T @ steps[rows][kept].double())  # [width, 2]
        layer.weight[:2] = solution.T.to(layer.weight)
    zero_still_motion(model, still)


def _anchor_errors(anchor: torch.Tensor, target: torch.Tensor, modality: tuple[str, ...]) -> dict[str, float]:
    """Mean squared error of the copy anchor (one frame, or moved per target frame) per modality."""
    error = ((anchor - target) ** 2).mean(dim=(1, 2, 3, 4))
    return {name: float(error[[m == name for m in modality]].mean()) for name in sorted(set(modality))}


def fit_motion_prior(
    model: torch.nn.Module,
    batches: BatchSource,
    num_batches: int,
    iterations: int,
    action_dropout: float,
    seed: int,
    radius: int,
) -> dict[str, tuple[float, float]]:
    """Fit `model.motion_prior` in place on rank 0's first `num_batches` batches (the same on every rank).

    A fraction `action_dropout` of the samples has its target actions dropped, as in training (they do not move).
    The least-squares start searches whole-pixel shifts up to `radius` latent pixels each way. Every modality's
    still action (`identity_action`) keeps zero motion throughout: the data's idle frames do not move, and a free
    intercept fitted to the moving ones made an idle player's view slide (doom: 0.19 latent pixels per latent frame).
    Returns {modality: (anchor error without motion, with the fitted motion)} on these batches.
    """
    if model.motion_prior is None:
        raise AstraError("motion_fit_batches > 0 but the model has no motion prior (motion_prior=False)")
    device = next(model.motion_prior.parameters()).device
    newest, target, actions = [], [], []
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for step in range(num_batches):
            batch = batches.batch(step, 0).to(device)
            target_frames = batch.target_latents.shape[2]
            dropped = (torch.rand(batch.size, generator=generator) < action_dropout).to(device)
            null = dropped[:, None].expand(-1, target_frames)
            actions.append(ActionInput(batch.action_values[:, -target_frames:], batch.modality, null))
            newest.append(batch.history_latents[:, :, -1:])
            target.append(batch.target_latents)
    newest, target, actions = torch.cat(newest), torch.cat(target), concat_actions(actions)

    before = _anchor_errors(newest, target, actions.modality)
    still = still_inputs(model)
    least_squares_start(model, actions, best_pixel_shifts(newest, target, radius), still)
    parameters = list(model.motion_prior.parameters())
    optimizer = torch.optim.Adam(parameters, lr=MOTION_FIT_LR)
    normalizers = model.action_projectors.normalizers
    for iteration in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = MOTION_FIT_LR * 0.5 * (1.0 + math.cos(math.pi * iteration / iterations))
        loss = ((copy_anchor(newest, model.motion_prior(actions, normalizers)) - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        zero_still_motion(model, still)
    for parameter in parameters:
        parameter.grad = None
    with torch.no_grad():
        after = _anchor_errors(copy_anchor(newest, model.motion_prior(actions, normalizers)), target, actions.modality)
    return {name: (before[name], after[name]) for name in before}
