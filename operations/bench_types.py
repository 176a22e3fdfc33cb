"""The benchmark's no-op operation type; loaded through OPS_OPERATION_TYPE_MODULES
by the benchmark's own processes only."""

from __future__ import annotations

from operations.registry import OperationType, register

register(OperationType(name="bench_noop", handler="operations.bench.noop", soft_time_limit=30))
