"""The models a server serves: one ONNX file in an onnxruntime session each,
with its protocol metadata, labels, statistics and batcher.

    model = load_model("exports/lenet_bn.onnx", providers, threads)          # name lenet_bn, version "1"
    model = load_model("repo/lenet_bn/2/model.onnx", providers, threads, name="lenet_bn", version="2")

Class labels come from a Triton label file when the repository's configuration
names one, else from the file's "labels" metadata (a JSON list, which
python -m export.onnx writes), else there are none.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnxruntime

from export.serve import protocol
from export.serve.batching import DynamicBatcher
from export.serve.protocol import TensorSpec
from export.serve.statistics import ModelStatistics

log = logging.getLogger("export.serve")

MODEL_VERSION = "1"
PROVIDER_ALIASES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# The ONNX metadata key holding the class labels (a JSON list), as export.onnx writes it.
LABELS_KEY = "labels"


class ServeError(Exception):
    """A problem with the command line or a model file: one line on stderr, exit 2."""


# --- models -------------------------------------------------------------------

@dataclasses.dataclass
class ServedModel:
    """One ONNX file in an onnxruntime session, with its protocol metadata."""

    name: str
    path: str
    session: onnxruntime.InferenceSession
    input: TensorSpec
    outputs: List[TensorSpec]
    labels: Optional[List[str]] = None  # one per class of the first output, when the model carries them
    version: str = MODEL_VERSION
    # Where IOBinding binds the outputs ("cuda" on a GPU provider), or None: a plain run.
    binding_device: Optional[str] = None
    batcher: Optional[DynamicBatcher] = None
    statistics: ModelStatistics = None

    def __post_init__(self):
        if self.statistics is None:
            self.statistics = ModelStatistics(self.name, self.version)

    @property
    def fixed_batch(self) -> Optional[int]:
        """The batch size of a model exported with a fixed batch, else None."""
        return None if self.input.shape[0] == -1 else self.input.shape[0]

    @property
    def output_specs(self) -> Dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.outputs}

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        if self.binding_device is None:
            return self.session.run([spec.name for spec in self.outputs], {self.input.name: batch})
        # IOBinding: the batch goes to the device once, the outputs are allocated
        # there by onnxruntime and come back once, with no staging copies between.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input.name, batch)
        for spec in self.outputs:
            binding.bind_output(spec.name, self.binding_device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def warm_up(self) -> float:
        """One run on a blank batch, so that the first request does not pay for
        onnxruntime's lazy initialisation (or TensorRT's engine build); its seconds."""
        started = time.perf_counter()
        self.run(np.zeros((self.fixed_batch or 1, *self.input.shape[1:]), np.float32))
        return time.perf_counter() - started

    def metadata(self, versions: Optional[Sequence[str]] = None) -> dict:
        """The protocol's model metadata; `versions`: every version served under the name."""
        return {"name": self.name, "versions": list(versions or [self.version]), "platform": "onnxruntime_onnx",
                "inputs": [self.input.metadata()], "outputs": [spec.metadata() for spec in self.outputs]}

    def config(self, max_batch: int, batch_timeout_ms: float) -> dict:
        """The model's configuration in Triton's JSON form (what tritonclient's
        get_model_config reads): dims without the batch when it is dynamic."""
        def tensor(spec: TensorSpec) -> dict:
            dims = list(spec.shape[1:] if self.fixed_batch is None else spec.shape)
            data_type = "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"
            return {"name": spec.name, "data_type": data_type, "dims": dims}

        config = {"name": self.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
                  "max_batch_size": 0 if self.fixed_batch else max_batch,
                  "input": [tensor(self.input)], "output": [tensor(spec) for spec in self.outputs]}
        if self.fixed_batch is None and max_batch > 1:
            config["dynamic_batching"] = {"max_queue_delay_microseconds": round(batch_timeout_ms * 1000)}
        return config


def _spec(node, path: str) -> TensorSpec:
    datatype = protocol.ONNX_TYPES.get(node.type)
    if datatype is None:
        raise ServeError(f"{path}: tensor '{node.name}' has type {node.type}, which the protocol cannot carry")
    # Symbolic dimensions (the dynamic batch, "batch") are -1 in the protocol.
    return TensorSpec(node.name, datatype, tuple(d if isinstance(d, int) else -1 for d in node.shape))


def resolve_providers(names: Sequence[str]) -> List[str]:
    """--providers (cuda, cpu or onnxruntime's full names) -> onnxruntime provider names."""
    available = onnxruntime.get_available_providers()
    chosen = []
    for name in names:
        provider = PROVIDER_ALIASES.get(name.lower(), name)
        if provider not in available:
            if provider in DEFAULT_PROVIDERS:  # an onnxruntime built without CUDA: CPU only
                log.warning("this onnxruntime has no %s; serving on the others (%s)", provider, ", ".join(available))
                continue
            raise ServeError(f"--providers: {name!r} is not a provider of this onnxruntime "
                             f"(available: {', '.join(available)})")
        if provider not in chosen:
            chosen.append(provider)
    if not chosen:
        raise ServeError(f"--providers: none of {', '.join(names)} is available (available: {', '.join(available)})")
    return chosen


def load_model(path: str, providers: list, threads: int, name: Optional[str] = None,
               version: str = MODEL_VERSION, labels: Optional[List[str]] = None,
               io_binding: str = "auto") -> ServedModel:
    """An onnxruntime session for `path`, served as `name` (default: the file's
    stem) and `version`, and warmed up; `labels` override the file's own;
    `providers` as onnxruntime takes them (names, or (name, options) pairs).
    io_binding: "auto" (on a GPU provider), "always" (on the CPU too), "never".
    ServeError with the reason if it cannot be served."""
    if not os.path.isfile(path):
        raise ServeError(f"{path}: no such file (export one with: python -m export.onnx --model NAME)")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # Idle intra-op threads would spin for the next run, taking the cores the
    # event loop needs to parse the next requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = onnxruntime.InferenceSession(path, options, providers=providers)
    except Exception as error:  # noqa: BLE001 -- onnxruntime raises several types for a bad file
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ServeError(f"{path}: onnxruntime cannot load it: {message}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ServeError(f"{path}: the model has {len(inputs)} inputs; export.serve serves models with one "
                         "input image batch (N, C, H, W)")
    spec = _spec(inputs[0], path)
    if len(spec.shape) != 4 or spec.datatype != "FP32" or any(d < 1 for d in spec.shape[1:]):
        raise ServeError(f"{path}: input '{spec.name}' is {spec.datatype} {list(spec.shape)}; export.serve "
                         "serves FP32 image batches (N, C, H, W) with fixed C, H and W")
    name = name or os.path.splitext(os.path.basename(path))[0]
    output_specs = [_spec(node, path) for node in outputs]
    if labels is None:
        labels = _labels(session, path, output_specs[0])
    else:
        labels = _checked_labels(labels, path, output_specs[0])
    model = ServedModel(name, path, session, spec, output_specs, labels, version,
                        _binding_device(session.get_providers()[0], io_binding))
    try:
        seconds = model.warm_up()
    except Exception as error:  # noqa: BLE001 -- onnxruntime's errors
        raise ServeError(f"{path}: the warm-up run failed: {str(error).strip().splitlines()[0]}") from None
    log.debug("model %s version %s: warm-up run %.1f ms", name, version, seconds * 1000)
    return model


def _binding_device(provider: str, io_binding: str) -> Optional[str]:
    on_gpu = provider in GPU_PROVIDERS
    if io_binding == "never" or (io_binding == "auto" and not on_gpu):
        return None
    return "cuda" if on_gpu else "cpu"


def provider_options(providers: Sequence[str], trt_cache: Optional[str] = None, trt_fp16: bool = False) -> list:
    """onnxruntime's providers argument: TensorRT with its engine (and timing)
    cache in `trt_cache`, so that a restart does not rebuild the engines."""
    chosen = []
    for provider in providers:
        if provider == "TensorrtExecutionProvider" and (trt_cache or trt_fp16):
            options = {"trt_fp16_enable": "True" if trt_fp16 else "False"}
            if trt_cache:
                options.update(trt_engine_cache_enable="True", trt_engine_cache_path=trt_cache,
                               trt_timing_cache_enable="True", trt_timing_cache_path=trt_cache)
            chosen.append((provider, options))
        else:
            chosen.append(provider)
    return chosen


def _labels(session: onnxruntime.InferenceSession, path: str, output: TensorSpec) -> Optional[List[str]]:
    """The class labels of the model's "labels" metadata, checked against its first output; None without."""
    text = session.get_modelmeta().custom_metadata_map.get(LABELS_KEY)
    if text is None:
        return None
    try:
        labels = json.loads(text)
    except ValueError:
        labels = None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ServeError(f"{path}: the '{LABELS_KEY}' metadata is not a JSON list of strings")
    return _checked_labels(labels, path, output, f"the '{LABELS_KEY}' metadata")


def _checked_labels(labels: List[str], path: str, output: TensorSpec, source: str = "the label file") -> List[str]:
    classes = output.shape[-1]
    if classes != -1 and len(labels) != classes:
        raise ServeError(f"{path}: {source} names {len(labels)} classes, but output '{output.name}' has {classes}")
    return labels
