"""A world model carried onto another autoencoder's latents.

Two autoencoders of the same shape, trained apart on the same frames, encode them into
latents that a rotation relates well: of the default world's versions 2 and 3, normalised,
a rotation explains 65% of the variance, a general linear map 90%. A DiT of the old
latents with its patch embedding turned by the rotation and its head turned back is a DiT
of the new latents: ``f_new(x) = R^T f_old(R x)``. Only a rotation keeps flow matching's
isotropic noise isotropic (a general map would feed the old DiT noise it never saw), so the
carried DiT is exactly the old one wherever ``old = R new`` holds, and the new world model
starts from it instead of from scratch (`world build` of a new version).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def fit_rotation(old: Tensor, new: Tensor) -> tuple[Tensor, float]:
    """The rotation ``R [C, C]`` minimising ``|old - R new|`` over latent positions
    (``old, new [C, ...]``, the same frames, each centred per channel first: orthogonal
    Procrustes) and the share of ``old``'s variance that ``R new`` explains."""
    if old.shape != new.shape:
        raise ValueError(f"latents of different shapes: {tuple(old.shape)}, {tuple(new.shape)}")
    a, b = old.flatten(1).double(), new.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    u, _, vh = torch.linalg.svd(a @ b.T)
    rotation = u @ vh
    explained = 1 - float((a - rotation @ b).pow(2).sum() / a.pow(2).sum().clamp_min(1e-12))
    return rotation.float(), explained


def rotate_dit(state: dict[str, Tensor], rotation: Tensor) -> dict[str, Tensor]:
    """The weights of a DiT of the old latents, carried onto the new ones (``old = R new``):
    the patch embedding takes ``R x`` (every latent of the window goes through it: past,
    current and memory) and the head's prediction is turned back by ``R^T``."""
    r = rotation.float()
    out = dict(state)
    w = state["patch_embedding.weight"]  # [dim, C, pt, ph, pw]
    if w.shape[1] != r.shape[0]:
        raise ValueError(f"the DiT takes {w.shape[1]} latent channels, the rotation {len(r)}")
    out["patch_embedding.weight"] = torch.einsum("dc...,ce->de...", w.float(), r).to(w.dtype)
    for key in ("head.head.weight", "head.head.bias"):
        v = state[key]  # rows ordered (patch position, channel), channel fastest
        turned = torch.einsum("ec,kc...->ke...", r.T, v.float().unflatten(0, (-1, len(r))))
        out[key] = turned.flatten(0, 1).to(v.dtype)
    return out
