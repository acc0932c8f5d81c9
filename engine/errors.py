"""Errors of runs and settings. Each prints as one line that says what is wrong and what to do."""
from __future__ import annotations


class ConfigError(ValueError):
    """A setting is wrong: a command-line argument, an experiment config, a SLURM profile."""


class RunMismatch(ConfigError):
    """A run folder holds a run with other result-affecting settings; nothing in it was changed."""


class RunBusy(RuntimeError):
    """Another process holds the run folder's lock."""
