"""Triton's statistics extension: per model, the count and cumulative time of
successful and failed requests, of queueing and of each compute phase, and the
same per batch size of the runs.

    GET /v2/models/stats, /v2/models/NAME/stats, /v2/models/NAME/versions/V/stats

The JSON is Triton's (what tritonclient's get_inference_statistics returns):
times in nanoseconds; `inference_count` counts rows (inferences) of successful
requests, `execution_count` model runs; `inference_stats` is per request (each
request is charged its batch's compute times, as Triton does), `batch_stats`
per run, by its number of rows. A failed request is one that reached the
model's queue and was not answered with outputs: refused as overloaded, timed
out waiting, or failed in onnxruntime; requests refused earlier (bad JSON, a
wrong shape) never reach a model and are counted by /metrics only.
Specification:
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_statistics.md
"""
from __future__ import annotations

import time
from typing import Dict, List

from export.serve.batching import Timing

_PHASES = ("compute_input", "compute_infer", "compute_output")


class Duration:
    """A count and a cumulative time in nanoseconds."""

    __slots__ = ("count", "ns")

    def __init__(self):
        self.count, self.ns = 0, 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * 1e9))

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


class ModelStatistics:
    """The statistics of one model version. Updated on the event loop only."""

    def __init__(self, name: str, version: str):
        self.name, self.version = name, version
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.requests = {key: Duration() for key in ("success", "fail", "queue", *_PHASES)}
        self.batches: Dict[int, Dict[str, Duration]] = {}

    def record_success(self, rows: int, timing: Timing, total_seconds: float) -> None:
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        self.requests["success"].add(total_seconds)
        self.requests["queue"].add(timing.queue)
        for phase in _PHASES:
            self.requests[phase].add(getattr(timing, phase))

    def record_failure(self, total_seconds: float) -> None:
        self.requests["fail"].add(total_seconds)

    def record_execution(self, timing: Timing) -> None:
        self.execution_count += 1
        phases = self.batches.setdefault(timing.batch_rows, {phase: Duration() for phase in _PHASES})
        for phase in _PHASES:
            phases[phase].add(getattr(timing, phase))

    def as_dict(self) -> dict:
        inference_stats = {key: duration.as_dict() for key, duration in self.requests.items()}
        inference_stats.update(cache_hit={"count": 0, "ns": 0}, cache_miss={"count": 0, "ns": 0})  # no cache
        return {
            "name": self.name, "version": self.version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": inference_stats,
            "batch_stats": [{"batch_size": size, **{phase: d.as_dict() for phase, d in phases.items()}}
                            for size, phases in sorted(self.batches.items())],
            "memory_usage": [],
        }


def statistics_response(models: List[ModelStatistics]) -> dict:
    return {"model_stats": [model.as_dict() for model in models]}
