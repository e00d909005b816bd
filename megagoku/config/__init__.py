"""Typed configuration: dataclasses, YAML loading with overrides, validation before any work."""

from megagoku.config.loader import (ConfigError, load_model_config, load_training_config,
                                    load_vae_training_config, to_dict, training_config_from_dict)
from megagoku.config.schema import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    FlowConfig,
    LatentConfig,
    ModelConfig,
    ParallelConfig,
    SampleConfig,
    TextConfig,
    TrainConfig,
    TrainingConfig,
    VAEConfig,
    VAETrainConfig,
    VAETrainingConfig,
)

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FlowConfig",
    "LatentConfig",
    "ModelConfig",
    "ParallelConfig",
    "SampleConfig",
    "TextConfig",
    "TrainConfig",
    "TrainingConfig",
    "VAEConfig",
    "VAETrainConfig",
    "VAETrainingConfig",
    "load_model_config",
    "load_training_config",
    "load_vae_training_config",
    "to_dict",
    "training_config_from_dict",
]
