"""Typed configuration: dataclasses, YAML loading with overrides, validation before any work."""

from megagoku.config.loader import (ConfigError, load_model_config, load_training_config,
                                    load_vae_training_config, to_dict, training_config_from_dict)
from megagoku.config.schema import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    FlowConfig,
    LatentConfig,
    LoopConfig,
    ModelConfig,
    ParallelConfig,
    SampleConfig,
    TextConfig,
    TrainingConfig,
    VAEConfig,
    VAELoopConfig,
    VAETrainingConfig,
)

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FlowConfig",
    "LatentConfig",
    "LoopConfig",
    "ModelConfig",
    "ParallelConfig",
    "SampleConfig",
    "TextConfig",
    "TrainingConfig",
    "VAEConfig",
    "VAELoopConfig",
    "VAETrainingConfig",
    "load_model_config",
    "load_training_config",
    "load_vae_training_config",
    "to_dict",
    "training_config_from_dict",
]
