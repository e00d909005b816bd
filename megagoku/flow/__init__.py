"""Rectified flow: timestep sampling, interpolation, loss, and the Euler ODE sampler with CFG;
beside it DDPM (`ddpm.py`: schedules, eps loss, ancestral and DDIM samplers), the baseline of the
RF-vs-DDPM ablation. Takes the model as a callable; imports nothing else of ours but the config
schema."""

from megagoku.flow.rectified_flow import (flow_loss, interpolate, sample_timesteps, shift_time,
                                          time_shift_for, training_loss)
from megagoku.flow.sampler import euler_sample, guided_velocity, sampling_schedule

__all__ = ["euler_sample", "flow_loss", "guided_velocity", "interpolate", "sample_timesteps",
           "sampling_schedule", "shift_time", "time_shift_for", "training_loss"]
