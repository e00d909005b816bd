import torch

from megagoku.config import training_config_from_dict
from megagoku.data.packing import grid_positions, unpatchify
from megagoku.inference import Generator
from megagoku.models import TextEncoder, build_model
from tests.conftest import randomize

CONFIG = {"model": {"preset": "models/tiny.yaml", "depth": 1, "hidden_size": 32, "num_heads": 2,
                    "rope_split": [4, 6, 6]},
          "data": {"height": 8, "width": 8, "frames": 4}}


def make_generator():
    cfg = training_config_from_dict(CONFIG, "<test>")
    model = randomize(build_model(cfg.model)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.3)  # keep the random velocity field tame
    return Generator(cfg, model, TextEncoder(cfg.text.encoder, cfg.text.max_length))


def test_videos_do_not_depend_on_the_batch_they_are_generated_in():
    gen = make_generator()
    both = gen.generate(["a red circle moving left", "a blue square"], 4, 8, 8, steps=3,
                        cfg_scale=3.0, seed=7)
    alone = gen.generate(["a blue square"], 4, 8, 8, steps=3, cfg_scale=3.0, seed=8)
    assert both[0].shape == (3, 4, 8, 8)
    torch.testing.assert_close(both[1], alone[0], atol=1e-5, rtol=1e-4)


def test_one_guided_euler_step_by_hand():
    """With one step the sampler returns noise + v_u + s * (v_c - v_u) at t=0: swapping the
    conditional and unconditional halves, or using another null caption, fails here."""
    gen = make_generator()
    prompt, scale = "a red circle moving left", 3.0
    [video] = gen.generate([prompt], 1, 8, 8, steps=1, cfg_scale=scale, seed=5)
    grid = (1, 2, 2)  # an 8x8 image in 4x4 patches
    noise = torch.randn(4, gen.config.model.patch_dim, generator=torch.Generator().manual_seed(5))
    positions = grid_positions(grid)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with torch.no_grad():
        v = {}
        for name, caption in (("cond", prompt), ("uncond", "")):
            text, text_cu = gen.text_encoder.encode([caption])
            v[name] = gen.model(noise, torch.zeros(1), positions, cu, text, text_cu)
    x = noise + v["uncond"] + scale * (v["cond"] - v["uncond"])
    expected = unpatchify(x, grid, gen.config.model.patch_size, 3).clamp(-1, 1)
    assert video.shape == (3, 1, 8, 8)
    torch.testing.assert_close(video, expected, atol=1e-5, rtol=1e-4)
    [unguided] = gen.generate([prompt], 1, 8, 8, steps=1, cfg_scale=1.0, seed=5)
    assert (unguided - video).abs().max() > 1e-3
