"""Text-to-video, text-to-image and image-to-video generation with a trained GokuTransformer.

Several prompts are generated in one packed sequence; with CFG the conditional and the
unconditional (empty caption) copies ride in the same pack, so each Euler step is one forward.
Sample i's noise comes from `seed + i`, so a video does not change with the batch it is in.
Image-to-video (a model trained with `model.image_condition`) adds the first frame's latent,
broadcast along time, to every token (Goku §2.5); the unconditional copy keeps the image and
drops only the caption, so CFG strengthens the prompt while the first frame stays given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from megagoku.config import ConfigError, TrainingConfig, saved_training_config
from megagoku.data.packing import grid_positions, patchify, unpatchify
from megagoku.flow import euler_sample, guided_velocity, sampling_schedule, time_shift_for
from megagoku.launch import heartbeat
from megagoku.models import GokuTransformer, TextEncoder, build_latent_space, build_model
from megagoku.config import ParallelConfig
from megagoku.parallel import (collectives, current_shard, ensure_single_process_groups,
                               gather_shards, initialize_groups, resolve_device)
from megagoku.parallel.distributed import init_distributed
from megagoku.parallel.weights import load_full_weights


def _concat_cu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([a, b[1:] + a[-1]])


@dataclass
class Generator:
    config: TrainingConfig
    model: GokuTransformer
    text_encoder: TextEncoder

    def __post_init__(self) -> None:
        self.latent_space = build_latent_space(self.config.latent)

    @torch.no_grad()
    def generate(self, prompts: list[str], frames: int, height: int, width: int,
                 steps: int, cfg_scale: float, seed: int = 0,
                 progress: Optional[Callable[[int, int], None]] = None,
                 seeds: Optional[list[int]] = None,
                 images: Optional[list[torch.Tensor]] = None) -> list[torch.Tensor]:
        """-> one video (3, frames, height, width) in [-1, 1] per prompt; sample i's noise comes
        from seeds[i] (default seed + i); `progress(step, steps)` after each Euler step.
        `images`: each prompt's first frame, (3, height, width) in [-1, 1] (I2V models)."""
        cfg = self.config
        patch = cfg.model.patch_size
        channels, lt, lh, lw = self.latent_space.latent_shape(frames, height, width)
        if lt % patch[0] or lh % patch[1] or lw % patch[2]:
            raise ValueError(f"latent {lt}x{lh}x{lw} of a {frames}x{height}x{width} video is not "
                             f"divisible by the patch {tuple(patch)}")
        grid = (lt // patch[0], lh // patch[1], lw // patch[2])
        n_tok = grid[0] * grid[1] * grid[2]
        b = len(prompts)
        device = next(self.model.parameters()).device
        seeds = list(seeds) if seeds is not None else [seed + i for i in range(b)]
        if len(seeds) != b:
            raise ValueError(f"{len(seeds)} seeds for {b} prompts")
        noise = torch.cat([torch.randn(n_tok, cfg.model.patch_dim,
                                       generator=torch.Generator().manual_seed(s))
                           for s in seeds]).to(device)
        positions = grid_positions(grid).repeat(b, 1).to(device)
        cu = (torch.arange(b + 1) * n_tok).to(torch.int32).to(device)
        text, text_cu = self.text_encoder.encode(prompts)
        guided = cfg_scale != 1.0
        if guided:
            null_text, null_cu = self.text_encoder.encode([""] * b)
            positions = positions.repeat(2, 1)
            cu = _concat_cu(cu, cu)
            text, text_cu = torch.cat([text, null_text]), _concat_cu(text_cu, null_cu)
        text, text_cu = text.to(device), text_cu.to(device)
        copies = 2 if guided else 1
        first = None
        if images is not None:
            first = self.first_frame_tokens(images, b, lt, (lh, lw)).to(device).repeat(copies, 1)

        shard = current_shard()  # under Ulysses each rank runs its slice of the pack

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            xx = x.repeat(copies, 1)
            tt = torch.full((copies * b,), t, device=device)
            local = self.model(shard.slice(xx), tt, shard.slice(positions), cu, text, text_cu,
                               None if first is None else shard.slice(first))
            v = gather_shards(local, xx.shape[0])  # every rank integrates the whole pack
            heartbeat.progress("sample")  # liveness under `megagoku launch`
            if guided:
                v_cond, v_uncond = v.chunk(2)
                return guided_velocity(v_cond, v_uncond, cfg_scale)
            return v

        shift = float(time_shift_for(cfg.flow, torch.tensor([n_tok]))[0])
        latents = euler_sample(velocity, noise, sampling_schedule(steps, shift), progress)
        videos = []
        for tokens in latents.cpu().split(n_tok):
            latent = unpatchify(tokens, grid, patch, channels)
            videos.append(self.latent_space.decode(latent))
            heartbeat.progress("decode")
        return videos

    def first_frame_tokens(self, images: list[torch.Tensor], count: int, latent_frames: int,
                           latent_size: tuple[int, int]) -> torch.Tensor:
        """Each image encoded as a one-frame video (a causal VAE encodes a clip's first frame
        alone, so this is the latent a clip starting with it has), broadcast along time and
        patchified: the tokens the model was trained with (`data.packing.first_frame_tokens`)."""
        if self.model.cond_embed is None:
            raise ValueError("an image was given but this model has no image conditioning "
                             "(train an I2V model: model.image_condition: true)")
        if len(images) != count:
            raise ValueError(f"{len(images)} images for {count} prompts")
        device = next(self.model.parameters()).device
        tokens = []
        for image in images:
            latent = self.latent_space.encode(image[:, None].to(device))
            if tuple(latent.shape[2:]) != latent_size:
                raise ValueError(f"the image's latent is {tuple(latent.shape[2:])}, the video's "
                                 f"{latent_size}: give an image of the video's size")
            latent = latent.expand(-1, latent_frames, -1, -1)
            tokens.append(patchify(latent, self.config.model.patch_size)[0])
        return torch.cat(tokens)


def load_generator(config_dict: dict, state_dict: dict[str, torch.Tensor], source: str,
                   device: str = "auto", tensor_parallel: int = 1, ulysses: int = 1
                   ) -> Generator:
    """Build model and text encoder from a checkpoint's config and load its weights. With
    `tensor_parallel` x `ulysses` > 1 (every rank of a launch calls this) the model is split
    over that many ranks: long videos on several GPUs."""
    config = saved_training_config(config_dict, source)  # old ones name the block they hold
    device = resolve_device(device)
    if tensor_parallel * ulysses > 1:
        init_distributed()
        world = collectives.world_size()
        if world != tensor_parallel * ulysses:
            raise ValueError(f"--tensor-parallel {tensor_parallel} x --ulysses {ulysses} must "
                             f"equal the launched world size {world}")
        initialize_groups(ParallelConfig(tensor_parallel=tensor_parallel, ulysses=ulysses))
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
    else:
        ensure_single_process_groups()
    model = build_model(config.model, device)
    load_full_weights(model, state_dict)
    model.eval()
    try:
        encoder = TextEncoder(config.text.encoder, config.text.max_length, device)
    except (FileNotFoundError, ValueError) as e:  # the checkpoint's config names no encoder here
        raise ConfigError(f"{source}: {e}") from None
    return Generator(config, model, encoder)
