"""The benchmark's no-op operation type, loaded through
OPS_OPERATION_TYPE_MODULES by the benchmark's own processes only (the
driver, its worker nodes, its web server)."""

from __future__ import annotations

from operations.handlers import OperationContext
from operations.registry import OperationType, register


def noop(ctx: OperationContext) -> None:
    """Does nothing: what is left is the platform's own cost per operation."""


register(OperationType(name="bench_noop", handler="bench.optypes.noop", soft_time_limit=30))
