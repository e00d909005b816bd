"""Our GokuBlock is Goku's released `Block` (goku/model.py of Saiyan-World/goku): a plain-PyTorch
restatement of the released block's math, written here from the released layout's names and
shapes alone, gives our block's output within float32 rounding after the weight map that
`megagoku convert --format goku-official` uses (megagoku/models/official.py); and that map is
exact both ways."""

import pytest
import torch
import torch.nn.functional as F

from megagoku.models import build_model
from megagoku.models.official import (LayoutError, from_official, official_tensors,
                                      our_sources, to_official)
from megagoku.models.pack_context import build_pack_context
from megagoku.ops import Rope3D, rope_angles
from megagoku.parallel import SequenceShard
from tests.conftest import randomize, small_model_config

EPS = 1e-6

# The released block's tensors and their shapes for dim D, H heads of d, text width T (its
# Attention: q_dim=dim, kv_dim=cross_attention_dim, heads x dim_head inner width, no biases;
# FeedForward(dim): mult 4, biases).
def released_shapes(dim, heads, head_dim, text_dim, mlp):
    inner = heads * head_dim
    shapes = {"norm1.linear.weight": (6 * dim, dim), "norm1.linear.bias": (6 * dim,),
              "norm2.weight": (dim,), "norm3.weight": (dim,),
              "mlp.fc1.weight": (mlp, dim), "mlp.fc1.bias": (mlp,),
              "mlp.fc2.weight": (dim, mlp), "mlp.fc2.bias": (dim,)}
    for attn, kv_dim in (("attn1", dim), ("attn2", text_dim)):
        shapes.update({f"{attn}.q_proj.weight": (inner, dim), f"{attn}.k_proj.weight": (inner, kv_dim),
                       f"{attn}.v_proj.weight": (inner, kv_dim), f"{attn}.o_proj.weight": (dim, inner),
                       f"{attn}.q_norm.weight": (inner,), f"{attn}.k_norm.weight": (inner,)})
    return shapes


def rms_norm(x, weight):
    """The released RMSNorm: float32, gain, cast back."""
    out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS)
    return (weight * out).to(x.dtype)


def rotate(x, cos, sin):
    """The released apply_rotary_emb: pairs (2i, 2i+1), x (heads, tokens, head_dim)."""
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(-2)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


def attention(w, name, xq, xkv, heads, cos, sin, cross):
    q = F.linear(xq, w[f"{name}.q_proj.weight"])
    k = F.linear(xkv, w[f"{name}.k_proj.weight"])
    v = F.linear(xkv, w[f"{name}.v_proj.weight"])
    q, k = rms_norm(q, w[f"{name}.q_norm.weight"]), rms_norm(k, w[f"{name}.k_norm.weight"])
    q, k, v = (t.view(t.shape[0], heads, -1).transpose(0, 1) for t in (q, k, v))
    q = rotate(q, cos, sin)
    if not cross:
        k = rotate(k, cos, sin)
    out = F.scaled_dot_product_attention(q[None], k[None], v[None])[0]
    return F.linear(out.transpose(0, 1).reshape(xq.shape[0], -1), w[f"{name}.o_proj.weight"])


def released_block(w, x, timestep, text, heads, cos, sin):
    """Block.forward of the released file for one sample: x (tokens, dim), timestep (dim,) the
    conditioning, text (tokens, text_dim); cos/sin (tokens, head_dim) of its RoPE."""
    emb = F.linear(F.silu(timestep), w["norm1.linear.weight"], w["norm1.linear.bias"])
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.float().chunk(6, dim=-1)
    # AdaLayerNorm: LayerNorm without gain (float32, as torch's LayerNorm under autocast).
    h = F.layer_norm(x.float(), (x.shape[-1],), eps=EPS) * (1 + scale_msa) + shift_msa
    h = h.to(x.dtype)
    out = attention(w, "attn1", h, h, heads, cos, sin, cross=False)
    x = (gate_msa * out.float()).to(out.dtype) + x
    x = x + attention(w, "attn2", rms_norm(x, w["norm2.weight"]), text, heads, cos, sin,
                      cross=True)
    h = rms_norm(x, w["norm3.weight"])
    h = (h.float() * (1 + scale_mlp) + shift_mlp).to(h.dtype)
    out = F.linear(F.gelu(F.linear(h, w["mlp.fc1.weight"], w["mlp.fc1.bias"]), approximate="tanh"),
                   w["mlp.fc2.weight"], w["mlp.fc2.bias"])
    return (gate_mlp * out.float()).to(out.dtype) + x


def official_weights(model, cfg) -> dict[str, torch.Tensor]:
    """The model's tensors in the official layout, as `convert --format goku-official` maps them."""
    ours = model.weights()
    return {e.name: to_official(ours[e.ours], e, cfg)
            for e in official_tensors({k: tuple(v.shape) for k, v in ours.items()}, cfg)}


def inputs(cfg, lengths, text_lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lengths), cfg.hidden_size, generator=g)
    cond = torch.randn(len(lengths), cfg.hidden_size, generator=g)
    text = torch.randn(sum(text_lengths), cfg.text_dim, generator=g)
    # Each sample a small (t, h, w) grid of positions, starting at 0.
    positions = torch.cat([torch.stack([torch.arange(n) // 6, torch.arange(n) // 3 % 2,
                                        torch.arange(n) % 3], -1) for n in lengths])
    return x, cond, text, positions


@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_our_block_is_the_released_block(kernels):
    cfg = small_model_config(depth=1, kernels=kernels, attention_backend="sdpa_padded")
    model = randomize(build_model(cfg)).eval()
    lengths, text_lengths = [13, 7], [5, 3]
    x, cond, text, positions = inputs(cfg, lengths, text_lengths)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    text_cu = torch.tensor([0] + text_lengths).cumsum(0).to(torch.int32)
    ctx = build_pack_context(cu, text_cu, SequenceShard())
    rope = Rope3D(positions, cfg.resolved_rope_split(), cfg.rope_theta, kernels)
    with torch.no_grad():
        ours = model.blocks[0](x, cond, rope, text, ctx)

    official = official_weights(model, cfg)
    block = {k.removeprefix("blocks.0."): v for k, v in official.items()
             if k.startswith("blocks.0.")}
    assert {k: tuple(v.shape) for k, v in block.items()} == released_shapes(
        cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.text_dim, 4 * cfg.hidden_size)
    # The RoPE frequencies are ours (the released file builds none): its cos/sin per channel.
    angles = rope_angles(positions, cfg.resolved_rope_split(), cfg.rope_theta).float()
    cos, sin = (f(angles).repeat_interleave(2, dim=-1) for f in (torch.cos, torch.sin))
    expected = []
    for i in range(len(lengths)):
        tok = slice(int(cu[i]), int(cu[i + 1]))
        txt = slice(int(text_cu[i]), int(text_cu[i + 1]))
        with torch.no_grad():
            expected.append(released_block(block, x[tok], cond[i], text[txt], cfg.num_heads,
                                           cos[tok], sin[tok]))
    torch.testing.assert_close(ours, torch.cat(expected), atol=2e-5, rtol=2e-5)


def test_the_block_in_bfloat16_is_the_released_block():
    """In bfloat16 (modulation and gates in float32, cast back): equal within bf16 rounding."""
    cfg = small_model_config(depth=1, kernels="reference", attention_backend="sdpa_padded")
    model = randomize(build_model(cfg)).eval().to(torch.bfloat16)
    lengths, text_lengths = [11], [4]
    x, cond, text, positions = (t.to(torch.bfloat16) if t.is_floating_point() else t
                                for t in inputs(cfg, lengths, text_lengths, seed=3))
    ctx = build_pack_context(torch.tensor([0, 11], dtype=torch.int32),
                             torch.tensor([0, 4], dtype=torch.int32), SequenceShard())
    rope = Rope3D(positions, cfg.resolved_rope_split(), cfg.rope_theta, "reference")
    with torch.no_grad():
        ours = model.blocks[0](x, cond, rope, text, ctx)
        block = {k.removeprefix("blocks.0."): v for k, v in official_weights(model, cfg).items()
                 if k.startswith("blocks.0.")}
        angles = rope_angles(positions, cfg.resolved_rope_split(), cfg.rope_theta).float()
        cos, sin = (f(angles).repeat_interleave(2, dim=-1) for f in (torch.cos, torch.sin))
        expected = released_block(block, x, cond[0], text, cfg.num_heads, cos, sin)
    assert ours.dtype == torch.bfloat16 and expected.dtype == torch.bfloat16
    error = (ours.float() - expected.float()).norm() / expected.float().norm()
    assert error < 1e-2, error


def test_the_official_map_is_exact_both_ways_and_names_every_tensor():
    cfg = small_model_config(depth=2, image_condition=True)
    model = randomize(build_model(cfg))
    ours = model.weights()
    official = official_weights(model, cfg)
    names = set(official)
    assert "blocks.1.attn1.q_proj.weight" in names and "blocks.0.attn2.v_proj.weight" in names
    assert not any(".attn." in n or ".cross_attn." in n or ".adaln." in n
               for n in names if n.startswith("blocks."))
    # Our own layers keep our names.
    assert {"patch_embed.weight", "t_embedder.mlp.0.weight", "final.linear.weight",
            "cond_embed.weight", "text_norm.weight"} <= names
    sources = our_sources(list(official))
    assert set(sources) == set(ours)
    for name, tensor in ours.items():
        back = from_official(official.__getitem__, sources[name], cfg)
        assert back.dtype == tensor.dtype and torch.equal(back, tensor), name
    # The fused projection per head: head h's q rows are q_proj's rows h*d..(h+1)*d.
    d = cfg.head_dim
    qkv = ours["blocks.0.attn.qkv.weight"].view(cfg.num_heads, 3, d, -1)
    assert torch.equal(official["blocks.0.attn1.k_proj.weight"][2 * d:3 * d], qkv[2, 1])


def test_the_official_layout_refuses_the_earlier_block_and_foreign_tensors():
    legacy = small_model_config(attn_norm="rms", qk_norm="per_head", mlp_norm_gain=False,
                                modulation_fp32=False)
    model = build_model(legacy)
    with pytest.raises(LayoutError, match="released block.*qk_norm=per_head"):
        official_tensors({k: tuple(v.shape) for k, v in model.weights().items()}, legacy)
    with pytest.raises(LayoutError, match="blocks.0.attn1.x_proj.weight: not a tensor"):
        our_sources(["blocks.0.attn1.x_proj.weight"])
    with pytest.raises(LayoutError, match="needs 3 parts"):
        our_sources(["blocks.0.attn1.q_proj.weight", "blocks.0.attn1.k_proj.weight"])

