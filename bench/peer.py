"""Hindsight's own API and worker as the reference of the Hindsight workload,
when it can run on this machine."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Say = Callable[[str], None]


def measure(options: Any, args: argparse.Namespace, say: Say) -> dict[str, Any]:
    """The peer's figures ({"available": True, ...}) or why there are none."""
    return {"available": False, "reason": "not set up yet"}
