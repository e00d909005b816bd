"""Image-to-video conditioning (Goku §2.5): each token sees its sample's first latent frame at its
(h, w), broadcast along time, through a zero-initialised `cond_embed`, so a model made from a
T2V checkpoint starts as exactly that model."""

import pytest
import torch

from megagoku.config import ModelConfig
from megagoku.data.packing import first_frame_tokens, pack, patchify
from megagoku.models import build_model
from megagoku.parallel import ensure_single_process_groups

CFG = dict(depth=2, hidden_size=64, num_heads=4, kernels="reference", text_dim=16)


@pytest.fixture(autouse=True)
def groups():
    ensure_single_process_groups()


def inputs(batch, text_len=3):
    torch.manual_seed(1)
    b = batch.num_samples
    text = torch.randn(b * text_len, 16)
    text_cu = (torch.arange(b + 1) * text_len).to(torch.int32)
    return torch.rand(b), batch.positions, batch.cu_seqlens, text, text_cu


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 2)])
def test_first_frame_tokens_broadcast_the_first_latent_frame(patch):
    video, still = torch.randn(3, 4, 4, 6), torch.randn(3, patch[0], 4, 6)
    batch = pack([video, still, video * 2], ["a", "b", "c"], ["video", "image", "video"], patch)
    cond = first_frame_tokens(batch, patch, 3, keep=[True, True, False])
    pieces = batch.split(cond)
    expected = patchify(video[:, :1].expand(-1, 4, -1, -1), patch)[0]
    assert torch.equal(pieces[0], expected)
    assert not pieces[1].any() and not pieces[2].any()  # an image; a dropped first frame
    # Every token of one (h, w) column carries the same first-frame patch (for pt=1).
    if patch[0] == 1:
        grid = pieces[0].reshape(4, 2, 3, -1)
        assert torch.equal(grid[0], grid[3])


def test_a_new_i2v_model_equals_the_t2v_model_it_starts_from():
    t2v = build_model(ModelConfig(**CFG))
    i2v = build_model(ModelConfig(**CFG, image_condition=True))
    assert i2v.new_input_weights() == {"cond_embed.weight"} and not t2v.new_input_weights()
    state = t2v.weights()
    i2v.load_weights({**state, "cond_embed.weight": i2v.cond_embed.weight.detach()})
    for layer in (t2v.final.linear, i2v.final.linear):  # give the output layer weights
        torch.nn.init.normal_(layer.weight, std=0.1, generator=torch.Generator().manual_seed(0))
    batch = pack([torch.randn(3, 4, 4, 4)], ["a"], ["video"], (1, 2, 2))
    cond = first_frame_tokens(batch, (1, 2, 2), 3)
    out_t2v = t2v(batch.tokens, *inputs(batch))
    assert torch.equal(i2v(batch.tokens, *inputs(batch), cond), out_t2v)
    # Once cond_embed has weights, the first frame changes the prediction.
    torch.nn.init.normal_(i2v.cond_embed.weight, std=0.1)
    assert not torch.allclose(i2v(batch.tokens, *inputs(batch), cond), out_t2v)
    assert torch.equal(i2v(batch.tokens, *inputs(batch), torch.zeros_like(cond)), out_t2v)


def test_a_first_frame_for_a_t2v_model_is_refused():
    t2v = build_model(ModelConfig(**CFG))
    batch = pack([torch.randn(3, 2, 4, 4)], ["a"], ["video"], (1, 2, 2))
    with pytest.raises(ValueError, match="without model.image_condition"):
        t2v(batch.tokens, *inputs(batch), batch.tokens)
