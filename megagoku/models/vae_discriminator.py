"""A small 3D PatchGAN discriminator for `megagoku train-vae`'s optional adversarial term.

It scores overlapping space-time patches of a (B, 3, T, H, W) video as real or reconstructed:
a stem, two strided Conv3d + GroupNorm + LeakyReLU levels that halve H and W (not time, so a
one-frame image and a short clip go through the same layers), and a 1-channel Conv3d head. The
output is a grid of logits (B, 1, T, H/4, W/4), one per patch, trained with the hinge loss.
Not causal: it only judges training reconstructions and is never part of the latent space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator3D(nn.Module):
    def __init__(self, channels: int = 32, levels: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(3, channels, (3, 3, 3), padding=1),
                                   nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(levels):
            # Kernel 4, stride 2, padding 1 halves H and W exactly; time keeps kernel 3, stride 1.
            layers += [nn.Conv3d(width, 2 * width, (3, 4, 4), stride=(1, 2, 2), padding=1),
                       nn.GroupNorm(min(8, 2 * width), 2 * width), nn.LeakyReLU(0.2)]
            width *= 2
        layers.append(nn.Conv3d(width, 1, (3, 3, 3), padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.layers(video)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Push real patches above +1 and reconstructed ones below -1; zero once they are."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The VAE's side of the hinge game: raise the discriminator's score of its reconstructions."""
    return -fake_logits.mean()
