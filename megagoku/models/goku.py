"""The Goku Transformer, readable top to bottom (after DiT's models.py).

Input is one packed token sequence (Patch n' Pack): several latents of different (T, H, W),
already cut into patches and laid end to end, with `cu_seqlens` marking where each sample starts,
per-token (t, h, w) patch positions, one timestep per sample, and each sample's caption features
packed the same way (`text`, `text_cu_seqlens`).

    tokens (L, C*pt*ph*pw) --PatchEmbed--> (L, dim)
    N x GokuBlock:  adaLN-Zero(t) -> self-attention (QK RMSNorm, 3D RoPE, within each sample)
                    RMSNorm -> cross-attention to the sample's own caption
                    adaLN-Zero(t) -> GELU-tanh MLP
    FinalLayer: adaLN(t) -> linear back to patch values (the velocity)

GokuBlock is, by default, the `Block` Goku's authors released (goku/model.py of
Saiyan-World/goku), number for number: a LayerNorm without gain before self-attention, Q and K
each RMS-normalised over all heads together, an RMSNorm with gain before cross-attention and
before the MLP, modulation and gates in float32. The model config's block keys select the earlier
megagoku block instead (ModelConfig, LEGACY_BLOCK). Everything around the blocks is ours: the
patch embedding, timestep embedder, caption norm, final layer and the RoPE frequencies (the
released file has none of them); models/official.py maps the blocks to the released names.

Every linear layer inside the blocks is a megatron-core Column/RowParallelLinear: heads and MLP
columns split over the tensor-parallel ranks. The model reads the process grid from
`megagoku.parallel` when it is built: under Ulysses `tokens` and `positions` are this rank's slice
of the padded pack (`parallel.current_shard()`), and the output is the velocity of that slice;
under megatron sequence parallelism the residual stream between the TP regions holds 1/TP of it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megagoku.config.schema import ModelConfig
from megagoku.models.attention import CrossAttention, SelfAttention, exclude_from_compile
from megagoku.models.norms import LayerNorm, RMSNorm
from megagoku.models.pack_context import PackContext, build_pack_context
from megagoku.ops import (Rope3D, accumulation_dtype, gated_residual, modulated_norm,
                          per_token)
from megagoku.parallel import (ColumnParallelLinear, RowParallelLinear, current_shard,
                               gather_sequence, grad_summed_over_tp, layout,
                               model_parallel_config, scatter_sequence, tensor_parallel_rank)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features (of 1000 t, as DiT's integer steps) -> MLP."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None, :]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, mp_config, init_method):
        super().__init__()
        self.fc1 = ColumnParallelLinear(dim, hidden, config=mp_config, init_method=init_method,
                                        bias=True, gather_output=False)
        # The output bias is added here, after the row-parallel reduction: under megatron SP it
        # meets only this rank's sequence shard, so its gradient is summed over the TP group.
        self.fc2 = RowParallelLinear(hidden, dim, config=mp_config, init_method=init_method,
                                     bias=True, input_is_parallel=True, skip_bias_add=True)
        self.sequence_parallel = mp_config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.fc1(x)
        out, bias = self.fc2(F.gelu(h, approximate="tanh"))
        return out + (grad_summed_over_tp(bias) if self.sequence_parallel else bias)


class GokuBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, tp_size: int, mp_config, replicated_input_config,
                 init_weights: bool = True):
        """`mp_config` for layers on the token stream (megatron SP gathers / scatters their
        tokens); `replicated_input_config` for layers whose input every TP rank holds whole (the
        per-sample conditioning, the captions). `init_weights=False`: leave the weights as
        allocated (models/construct.py sets them)."""
        super().__init__()
        dim, eps = cfg.hidden_size, cfg.norm_eps
        xavier = nn.init.xavier_uniform_ if init_weights else _left_as_allocated
        zeros = nn.init.zeros_ if init_weights else _left_as_allocated
        self.sequence_parallel = mp_config.sequence_parallel
        self.eps, self.kernels = eps, cfg.kernels
        self.attn_norm, self.modulation_fp32 = cfg.attn_norm, cfg.modulation_fp32
        # Per-block adaLN-Zero: shift/scale/gate for attention and MLP (the released block's
        # norm1.linear). Zero-initialised, so every block starts as the identity. Gathered: each
        # rank modulates the full hidden state.
        self.adaln = ColumnParallelLinear(dim, 6 * dim, config=replicated_input_config,
                                          init_method=zeros, bias=True,
                                          gather_output=True)
        kernels = cfg.kernels
        # Applied by itself in the activations' dtype; with float32 modulation the modulated norm
        # op computes it (no gain, so no parameter either way).
        self.norm1 = LayerNorm(dim, eps) if cfg.attn_norm == "layer" else \
            RMSNorm(dim, eps, learnable=False, kernels=kernels)
        self.attn = SelfAttention(dim, cfg.num_heads, tp_size, mp_config, eps,
                                  cfg.attention_backend, xavier, kernels, cfg.qk_norm)
        self.norm2 = RMSNorm(dim, eps, grad_over_tp=self.sequence_parallel, kernels=kernels)
        self.cross_attn = CrossAttention(dim, cfg.text_dim, cfg.num_heads, tp_size, mp_config,
                                         replicated_input_config, eps, cfg.attention_backend,
                                         cfg.cross_attn_rope, xavier, kernels, cfg.qk_norm)
        # Under megatron SP each rank applies the gain to its own tokens, as norm2's.
        self.norm3 = RMSNorm(dim, eps, learnable=cfg.mlp_norm_gain,
                             grad_over_tp=self.sequence_parallel, kernels=kernels)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), mp_config, xavier)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, rope: Rope3D,
                text: torch.Tensor, ctx: PackContext) -> torch.Tensor:
        mod, _ = self.adaln(F.silu(cond))
        if self.sequence_parallel:  # each TP rank modulates different tokens
            mod = grad_summed_over_tp(mod)
        if not self.modulation_fp32:
            return self._forward_in_activation_dtype(x, mod, rope, text, ctx)
        # The released block: shift, scale and gate in float32 (one row per sample, spread over
        # its tokens inside the ops), norm and modulation computed there, cast back.
        segment = ctx.residual_segment
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = \
            mod.to(accumulation_dtype(mod.dtype)).chunk(6, dim=-1)
        h = modulated_norm(x, self.attn_norm, None, self.eps, shift_a, scale_a, segment,
                           self.kernels)
        x = gated_residual(x, gate_a, self.attn(h, rope, ctx.self_layout), segment, self.kernels)
        x = x + self.cross_attn(self.norm2(x), text, rope, ctx.query_layout, ctx.text_layout)
        h = modulated_norm(x, "rms", self.norm3.gain(), self.eps, shift_m, scale_m, segment,
                           self.kernels)
        return gated_residual(x, gate_m, self.mlp(h), segment, self.kernels)

    def _forward_in_activation_dtype(self, x: torch.Tensor, mod: torch.Tensor, rope: Rope3D,
                                     text: torch.Tensor, ctx: PackContext) -> torch.Tensor:
        """The earlier megagoku block's modulation and gates, in the activations' dtype."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = \
            per_token(mod, ctx.residual_segment).chunk(6, dim=-1)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope,
                                   ctx.self_layout)
        x = x + self.cross_attn(self.norm2(x), text, rope, ctx.query_layout, ctx.text_layout)
        x = x + gate_m * self.mlp(modulate(self.norm3(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int, eps: float, kernels: str):
        super().__init__()
        self.norm = RMSNorm(dim, eps, learnable=False, kernels=kernels)
        self.adaln = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        shift, scale = per_token(self.adaln(F.silu(cond)), segment).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def _left_as_allocated(tensor: torch.Tensor) -> torch.Tensor:
    """The init method of a model whose weights are set afterwards (models/construct.py)."""
    return tensor


class GokuTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, init_weights: bool = True):
        """`init_weights=False`: skip the initialisation (the weights are set afterwards, one
        logical tensor at a time, by models/construct.py)."""
        super().__init__()
        self.cfg = cfg
        self.layout = layout()  # the process grid, fixed when the model is built
        tp_size = self.layout.tensor_parallel
        split = tp_size * self.layout.ulysses
        if cfg.num_heads % split:
            raise ValueError(f"model.num_heads: {cfg.num_heads} heads cannot be split over "
                             f"{tp_size} tensor-parallel x {self.layout.ulysses} Ulysses ranks")
        mp_config = model_parallel_config(tp_size, self.layout.megatron_sp)
        replicated_input_config = model_parallel_config(tp_size)
        dim = cfg.hidden_size
        self.rope_split = cfg.resolved_rope_split()
        self.patch_embed = nn.Linear(cfg.patch_dim, dim)  # = Conv3d with kernel = stride = patch
        # I2V: the first frame's patches next to each noisy patch. A Linear of the concatenated
        # channels is patch_embed(x) + cond_embed(c): the widened patch embedding, kept as its
        # own tensor so that a T2V checkpoint loads as it is and this part starts at zero.
        self.cond_embed = nn.Linear(cfg.patch_dim, dim, bias=False) if cfg.image_condition \
            else None
        self.t_embedder = TimestepEmbedder(dim, cfg.timestep_freq_dim)
        self.text_norm = RMSNorm(cfg.text_dim, cfg.norm_eps, kernels=cfg.kernels)
        self.blocks = nn.ModuleList(GokuBlock(cfg, tp_size, mp_config, replicated_input_config,
                                              init_weights) for _ in range(cfg.depth))
        self.final = FinalLayer(dim, cfg.patch_dim, cfg.norm_eps, cfg.kernels)
        if init_weights:
            self._init_plain_layers()
        if cfg.compile:
            compile_blocks(self.blocks)

    def _init_plain_layers(self) -> None:
        """DiT's initialisation for the layers outside the blocks (the megatron layers got theirs
        at construction): xavier embeddings, small timestep MLP, zero output layer."""
        if self.patch_embed.weight.is_meta:
            return
        nn.init.xavier_uniform_(self.patch_embed.weight)
        nn.init.zeros_(self.patch_embed.bias)
        if self.cond_embed is not None:
            nn.init.zeros_(self.cond_embed.weight)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        for layer in (self.final.adaln, self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def new_input_weights(self) -> set[str]:
        """Weights that a checkpoint of the same model without image conditioning lacks, and
        that start at zero when it initialises this one (`checkpoint.init_from`)."""
        return {"cond_embed.weight"} if self.cond_embed is not None else set()

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors of the state dict (megatron layers add `_extra_state` entries that hold
        no data here); what checkpoints store."""
        return {k: v for k, v in self.state_dict().items() if isinstance(v, torch.Tensor)}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load `weights()` back, strictly: every tensor present, none unknown."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("._extra_state")]
        if missing or unexpected:
            raise KeyError(f"weights do not fit this model: missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]}")

    def forward(self, tokens: torch.Tensor, timesteps: torch.Tensor, positions: torch.Tensor,
                cu_seqlens: torch.Tensor, text: torch.Tensor, text_cu_seqlens: torch.Tensor,
                first_frame: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens (L, patch_dim), timesteps (B,), positions (L, 3), cu_seqlens (B+1,),
        text (S, text_dim), text_cu_seqlens (B+1,) -> velocity (L, patch_dim).

        `first_frame` (L, patch_dim), I2V models only: each token's patch of its sample's first
        frame (`data.packing.first_frame_tokens`); zeros, or None, for no image.

        Under Ulysses, `tokens` and `positions` are this rank's slice of the padded pack
        (`parallel.current_shard().slice(...)`) and so is the output; `cu_seqlens` always
        describes the whole pack."""
        lay = self.layout
        shard = current_shard()
        num_samples = cu_seqlens.numel() - 1
        if num_samples != timesteps.numel() or text_cu_seqlens.numel() - 1 != num_samples:
            raise ValueError(f"pack holds {num_samples} samples but got {timesteps.numel()} "
                             f"timesteps and {text_cu_seqlens.numel() - 1} captions")
        start, stop = shard.bounds(int(cu_seqlens[-1]))
        if tokens.shape[0] != stop - start or positions.shape[0] != stop - start:
            raise ValueError(f"this rank's slice of the pack has {stop - start} tokens, got "
                             f"{tokens.shape[0]} tokens and {positions.shape[0]} positions")
        ctx = build_pack_context(cu_seqlens, text_cu_seqlens, shard, tensor_parallel_rank(),
                                 lay.tensor_parallel if lay.megatron_sp else 1)
        x = self.patch_embed(tokens)
        if first_frame is not None:
            if self.cond_embed is None:
                raise ValueError("first_frame given to a model without model.image_condition")
            x = x + self.cond_embed(first_frame.to(x.dtype))
        if lay.megatron_sp:
            x = scatter_sequence(x)
        cond = self.t_embedder(timesteps)
        rope = Rope3D(positions, self.rope_split, self.cfg.rope_theta, self.cfg.kernels)
        text = self.text_norm(text)
        for block in self.blocks:
            x = block(x, cond, rope, text, ctx)
        if lay.megatron_sp:
            x = gather_sequence(x)
        return self.final(x, cond, ctx.slice_segment)


def compile_blocks(blocks: nn.ModuleList) -> None:
    """Regional torch.compile: each block's forward compiled in place (its state dict keeps its
    names). The blocks are one class whose parameters dynamo takes as inputs, so all of them
    share one graph; the attention kernels run uncompiled between the graph's pieces
    (`varlen_attention` is excluded: its per-sample loop would otherwise specialise the graph
    to every pack's lengths)."""
    exclude_from_compile()
    for block in blocks:
        block.compile(dynamic=True)


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> GokuTransformer:
    """Build the model plainly; `device="meta"` builds a shape-only model (for counting)."""
    with torch.device(device):
        return GokuTransformer(cfg)
