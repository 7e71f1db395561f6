"""Adversarial fine-tuning of a VAE decoder (the encoder frozen): a patch discriminator on
frames, hinge losses, discriminator feature matching, and the decoder fed noisy latents.

PatchGAN (Isola et al. 2017) with hinge losses as VQGAN (Esser et al. 2021):
    L_D = E[relu(1 - D(x))] + E[relu(1 + D(G(z)))],   L_G = -E[D(G(z))],
and VQGAN's adaptive weight lambda = ||grad L_rec|| / ||grad L_G|| at the decoder's last
layer, so the adversarial term never drowns the reconstruction. Feature matching (Salimans
et al. 2016; pix2pixHD) adds L1 between the discriminator's features of real and decoded
frames: a perceptual loss from a network trained here, nothing downloaded. The decoder sees
latents with noise added (a random scale per sample), as the world model's imperfect latents
will reach it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from matrixgame.models.vae import WanVAE
from matrixgame.train.vae_task import frames_to_model, psnr, reconstruction_loss

Tensor = torch.Tensor


class PatchDiscriminator(nn.Module):
    """Per-frame patch discriminator: frames ``[N, 3, H, W]`` -> (logits ``[N, 1, H/8, W/8]``,
    the features of each stage)."""

    def __init__(self, width: int = 32, stages: int = 3) -> None:
        super().__init__()
        layers, c_in = [], 3
        for i in range(stages):
            c_out = width * 2**i
            norm = nn.GroupNorm(8, c_out) if i else nn.Identity()
            layers.append(nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1), norm, nn.LeakyReLU(0.2)))
            c_in = c_out
        self.stages = nn.ModuleList(layers)
        self.logits = nn.Conv2d(c_in, 1, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.logits(x), features


class DecoderGAN(nn.Module):
    """A VAE whose decoder is fine-tuned against a discriminator; the encoder is frozen.

    ``forward(frames [B, 3, T, H, W], noise [B])`` returns everything the losses need in one
    call (so that DDP sees one forward): the reconstruction from noisy latents, the
    discriminator's view of it through detached parameters (the generator's term: its
    gradient reaches the decoder only), and its view of real and detached decoded frames
    (the discriminator's term: its gradient reaches the discriminator only)."""

    def __init__(self, vae: WanVAE, disc: PatchDiscriminator | None = None,
                 r1: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.vae, self.disc, self.r1 = vae, disc or PatchDiscriminator(), r1
        for p in vae.encoder.parameters():
            p.requires_grad_(False)
        for p in vae.conv1.parameters():
            p.requires_grad_(False)

    def forward(self, frames: Tensor, noise: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            latents = self.vae.encode(frames)
        scale = noise.view(-1, *([1] * (latents.ndim - 1))).to(latents)
        recon = self.vae.decode(latents + scale * torch.randn_like(latents))
        real, fake = _images(frames), _images(recon)
        frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
        g_logits, g_features = torch.func.functional_call(self.disc, frozen, (fake,))
        if self.r1 and torch.is_grad_enabled():
            real = real.detach().requires_grad_(True)
        d_real, real_features = self.disc(real)
        d_fake, _ = self.disc(fake.detach())
        return {"recon": recon, "g_logits": g_logits, "g_features": g_features,
                "d_real": d_real, "d_fake": d_fake, "real": real,
                "real_features": [f.detach() for f in real_features]}  # fmt: skip


def _images(x: Tensor) -> Tensor:
    b, c, t, h, w = x.shape  # [B, C, T, H, W] -> [B T, C, H, W]
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def hinge_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def r1_penalty(d_real: Tensor, real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): E ||grad_x D(x)||^2 on real frames, D(x) a frame's mean
    patch logit, which keeps the discriminator smooth where the data is, so it cannot win
    by a margin the decoder's gradient learns nothing from (its gradient reaches the
    discriminator only). On the sum of the patch logits instead (192 patches at 96x128)
    gamma 1 flattened the discriminator to a constant within 250 steps."""
    (grad,) = torch.autograd.grad(d_real.flatten(1).mean(1).sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def feature_matching_loss(fake: list[Tensor], real: list[Tensor]) -> Tensor:
    return sum(F.l1_loss(f, r) for f, r in zip(fake, real, strict=True)) / len(fake)


@dataclass(frozen=True)
class DecoderTask:
    """Reconstruction (L1 + L2) + adaptively weighted hinge adversarial term + feature
    matching for the decoder, plus the discriminator's hinge loss, in one scalar (the two
    parts touch disjoint parameters)."""

    height: int = 96
    width: int = 128
    l1: float = 1.0
    l2: float = 1.0
    adversarial: float = 0.5  # times VQGAN's adaptive weight
    feature_matching: float = 0.0
    latent_noise: float = 0.2  # max std of the noise added to the (normalised) latents
    adaptive_max: float = 1e4
    r1: float = 0.0  # gamma of the R1 penalty, gamma / 2 * E ||grad D(real)||^2 (0: off)

    def loss(self, model, batch: dict, step: int) -> tuple[Tensor, dict]:
        x = frames_to_model(batch["frames"], self.height, self.width)
        noise = torch.rand(x.shape[0], device=x.device) * self.latent_noise
        out = model(x, noise)
        inner = getattr(model, "module", model)
        err = out["recon"].float() - x
        rec = reconstruction_loss(err, self.l1, self.l2)
        g_adv = -out["g_logits"].float().mean()
        fm = feature_matching_loss(out["g_features"], out["real_features"])
        weight = self.adaptive_weight(rec, g_adv, inner.vae.decoder.head[-1].weight)
        d_loss = hinge_discriminator_loss(out["d_real"].float(), out["d_fake"].float())
        r1 = (r1_penalty(out["d_real"], out["real"]) if self.r1 and torch.is_grad_enabled()
              else torch.zeros((), device=x.device))  # fmt: skip
        loss = rec + weight * g_adv + self.feature_matching * fm + d_loss + self.r1 / 2 * r1
        return loss, {
            "loss": float(loss.detach()),
            "rec": float(rec.detach()),
            "psnr": psnr(out["recon"].detach(), x),
            "g_adv": float(g_adv.detach()),
            "adv_weight": float(weight),
            "feature_matching": float(fm.detach()),
            "d_loss": float(d_loss.detach()),
            "d_real": float(out["d_real"].detach().mean()),
            "d_fake": float(out["d_fake"].detach().mean()),
            "r1": float(r1.detach()),
        }

    def adaptive_weight(self, rec: Tensor, adv: Tensor, last: Tensor) -> Tensor:
        """lambda = adversarial * ||d rec / d last|| / ||d adv / d last|| (VQGAN, eq. 7)."""
        if self.adversarial == 0 or not torch.is_grad_enabled():
            return torch.zeros((), device=rec.device)
        g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
        ratio = g_rec.norm() / (g_adv.norm() + 1e-4)
        return self.adversarial * ratio.clamp(0, self.adaptive_max).detach()
