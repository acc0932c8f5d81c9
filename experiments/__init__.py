"""Experiment configs, the grid runner and the collector of the transfer table."""
from .config import load_config

__all__ = ["load_config"]
