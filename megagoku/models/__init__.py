"""GokuTransformer and the pieces around it: attention, norms, latent space, text encoder."""

from megagoku.models.goku import GokuTransformer, build_model
from megagoku.models.latent import IdentityLatent, build_latent_space
from megagoku.models.text_encoder import TextEncoder

__all__ = ["GokuTransformer", "IdentityLatent", "TextEncoder", "build_latent_space", "build_model"]
