"""Action-free guidance (AFG) and optional text classifier-free guidance, batched into one forward.

`v = v_null + s (v_act - v_null)` (paper eq. 4). The conditional and the null passes are concatenated along the
batch and run as ONE model call. "Null" replaces the actions of the TARGET frames with the learned null action
(`ActionInput.null = True`); history frames keep their real actions. Why not null everything as the authors do:
the history actions are facts already realised in the history frames, guidance contrasts only the action that is
being asked for now; and a streaming KV cache holds history keys/values computed once with the real history
actions, so the null pass can share it. Training's action dropout nulls exactly the same frames
(astra/train/trainer.py), so the model learns the null that guidance queries.

Text CFG (when `text_scale != 1` and text is given) adds a third pass with no action and the null text:
`v = v_nn + s_text (v_text - v_nn) + s_act (v_cond - v_text)` (InstructPix2Pix-style composition), where
`v_text` is the null-action pass and `v_nn` nulls both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from astra.diffusion.flow import copy_anchor, copy_prior_velocity


def null_target_actions(actions: Any, target_frames: int) -> Any:
    """A copy of `actions` (an ActionInput) whose last `target_frames` frames use the learned null action."""
    batch, frames = actions.values.shape[:2]
    if not 1 <= target_frames <= frames:
        raise ValueError(f"target_frames {target_frames} must lie in [1, {frames}] (frames covered by the actions)")
    null = torch.zeros(batch, frames, dtype=torch.bool, device=actions.values.device)
    if actions.null is not None:
        null = null | actions.null.to(null.device, torch.bool)
    null[:, frames - target_frames :] = True
    return dataclasses.replace(actions, null=null)


def concat_actions(parts: list[Any]) -> Any:
    """Concatenate ActionInputs along the batch (modality tuples are joined, missing null masks become False, values
    are zero-padded to the widest part: a batch is as wide as its widest modality)."""
    width = max(p.values.shape[-1] for p in parts)
    nulls = [
        p.null.to(torch.bool) if p.null is not None else torch.zeros(p.values.shape[:2], dtype=torch.bool)
        for p in parts
    ]
    return dataclasses.replace(
        parts[0],
        values=torch.cat([F.pad(p.values, (0, width - p.values.shape[-1])) for p in parts]),
        modality=tuple(m for p in parts for m in p.modality),
        null=torch.cat([n.to(parts[0].values.device) for n in nulls]),
    )


def guidance_passes(action_scale: float, text_scale: float, has_actions: bool, has_text: bool) -> int:
    """How many copies of the batch one guided forward runs (a KV cache must be prefilled with that many)."""
    use_action = has_actions and action_scale != 1.0
    use_text = has_text and text_scale != 1.0
    if use_text:
        return 3 if has_actions else 2
    return 2 if use_action else 1


def _repeat(tensor: torch.Tensor | None, copies: int) -> torch.Tensor | None:
    return None if tensor is None else torch.cat([tensor] * copies)


def guided_velocity(
    model: torch.nn.Module,
    target_latents: torch.Tensor,
    target_timesteps: torch.Tensor,
    *,
    history_latents: torch.Tensor | None = None,
    history_timesteps: torch.Tensor | None = None,
    actions: Any = None,
    text: torch.Tensor | None = None,
    null_text: torch.Tensor | None = None,
    kv_cache: Any = None,
    action_scale: float = 1.0,
    text_scale: float = 1.0,
    copy_prior_sigma: float | None = None,
    anchor: torch.Tensor | None = None,
    step_action_scale: float | None = None,
    guide_anchor: bool = False,
) -> torch.Tensor:
    """The (guided) velocity of the target chunk, `[B, C, Ft, H, W]`, from a single batched model call.

    `step_action_scale` (default `action_scale`) is the scale this call combines with, while the passes it runs
    follow `action_scale`: a step outside the sampler's guidance interval (scale 1) runs the same passes, so a KV
    cache prefilled for guidance serves every step.

    With a `kv_cache`, the cache must hold `guidance_passes(...)` copies of the batch (cond first, then null).
    `copy_prior_sigma` adds `copy_prior_velocity` around `anchor` (default: the newest history frame) to the
    network's residual once, after the combination. A motion prior moves that anchor by the conditional pass's
    actions, never more: the prior is already the data's mean motion for the action, and amplifying it s-fold
    (guiding the anchors too) overshot: 0.8-1.7 dB less next-chunk PSNR per world (8 train-split cases per world,
    s = 3). Below scale 1 the motion shrinks with the scale, to none at 0 (the action-free velocity).

    `guide_anchor` instead guides the whole velocity, as v_null + s (v_act - v_null) reads: each pass's copy prior
    sits at its own anchor (the null pass's unmoved), and since that prior is affine in the anchor, guiding it is
    the prior at the anchor u + s (w - u) (u unmoved, w moved by the conditional motion). More action following for
    less next-chunk PSNR (docs/results.md, session 30).
    """
    batch, _, target_frames = target_latents.shape[:3]
    passes = guidance_passes(action_scale, text_scale, actions is not None, text is not None)
    combine_scale = action_scale if step_action_scale is None else step_action_scale
    if actions is not None and combine_scale != 1.0 and passes == 1:
        raise ValueError(
            f"step_action_scale {combine_scale} needs the action-free pass, which action_scale 1 does not run: "
            "size the passes with a scale other than 1 (SamplerConfig.passes_action_scale)"
        )
    use_text_guidance = text is not None and text_scale != 1.0
    if use_text_guidance and null_text is None:
        null_text = torch.zeros_like(text)

    batched_actions = actions
    if actions is not None and passes > 1:
        nulled = null_target_actions(actions, target_frames)
        batched_actions = concat_actions([actions] + [nulled] * (passes - 1))
    batched_text = _repeat(text, passes)
    if use_text_guidance:
        batched_text = torch.cat([text] * (passes - 1) + [null_text])

    out = model(
        _repeat(target_latents, passes),
        _repeat(target_timesteps, passes),
        history_latents=_repeat(history_latents, passes),
        history_timesteps=_repeat(history_timesteps, passes),
        actions=batched_actions,
        text=batched_text,
        kv_cache=kv_cache,
    )

    def combine(chunks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if passes == 1:
            return chunks[0]
        if use_text_guidance and actions is not None:  # cond, null action, null action + null text
            v_cond, v_text, v_none = chunks
            return v_none + text_scale * (v_text - v_none) + combine_scale * (v_cond - v_text)
        v_cond, v_null = chunks  # cond and one null pass (the null action, or the null text when there are no actions)
        scale = combine_scale if not use_text_guidance else text_scale
        return v_null + scale * (v_cond - v_null)

    guided = combine(out.velocity.split(batch))
    if copy_prior_sigma is not None:
        if anchor is None:
            if history_latents is None:
                raise ValueError("the copy prior needs an anchor: pass history_latents or anchor")
            anchor = history_latents[:, :, -1:]
        if out.motion is not None:
            motion = out.motion.split(batch)[0]  # the conditional pass's (a null action does not move)
            if guide_anchor:
                anchor = anchor + combine_scale * (copy_anchor(anchor, motion) - anchor)
            else:  # scaled by the step's scale up to 1 (scale 0 is the action-free velocity); guidance above 1
                # amplifies only the network's residual
                anchor = copy_anchor(anchor, motion * min(max(combine_scale, 0.0), 1.0))
        guided = guided + copy_prior_velocity(target_latents, target_timesteps, anchor, copy_prior_sigma)
    return guided
