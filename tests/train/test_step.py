import pytest
import torch

from megagoku.config import ConfigError, load_training_config
from megagoku.train.step import autocast
from megagoku.train.trainer import preflight


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_precision_auto_is_fp32_on_cpu_and_bf16_autocast_on_gpu():
    assert not isinstance(autocast("auto", torch.device("cpu")), torch.autocast)
    ctx = autocast("auto", torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert ctx.device == "cuda"


def test_bf16_on_the_cpu_is_refused_before_any_work():
    cfg = load_training_config(None, ["train.precision=bf16", "train.device=cpu"])
    with pytest.raises(ConfigError, match="train.precision: bf16 needs a GPU"):
        preflight(cfg, "x.yaml")
