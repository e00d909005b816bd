import torch

from megagoku.config import training_config_from_dict
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


def test_guidance_scale_changes_the_result_and_images_are_one_frame():
    gen = make_generator()
    plain = gen.generate(["a red circle"], 1, 8, 8, steps=2, cfg_scale=1.0, seed=0)[0]
    guided = gen.generate(["a red circle"], 1, 8, 8, steps=2, cfg_scale=5.0, seed=0)[0]
    assert plain.shape == (3, 1, 8, 8)
    assert (plain - guided).abs().max() > 1e-4
