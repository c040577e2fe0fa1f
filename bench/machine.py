"""The one-line description of this machine that every benchmark prints first."""

from __future__ import annotations

import os
import platform

import torch


def machine_line() -> str:
    """``machine: <arch>, <n> CPUs, <os>, torch <v>, python <v>``."""
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
