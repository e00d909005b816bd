"""Exit codes that mean something to whoever restarts a training process (the fault-tolerant
launcher, a Slurm requeue script). Kept apart so that the launcher needs nothing else of ours."""

# Stopped on SIGUSR1/SIGTERM after committing a checkpoint: run me again with --resume auto.
# 75 is EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry").
REQUEUE = 75

# Stopped by a loss anomaly under train.anomaly_response=rollback, without saving: run me again
# with --resume auto (the newest valid checkpoint; the anomalous steps are recorded to be skipped).
ROLLBACK = 76

# A config or checkpoint error (`megagoku.cli` turns ConfigError and CheckpointError into it: a
# bad config, no valid checkpoint to resume, a save that failed): final. The launcher never
# retries it: the same command meets the same error.
CONFIG_ERROR = 2
