"""The `megagoku` subcommands: train, sample, info, demo, bench, data."""
