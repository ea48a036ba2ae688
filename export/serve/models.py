"""The models a server serves: one ONNX file in an onnxruntime session each,
with its protocol metadata, labels, statistics and batcher.

    model = load_model("exports/lenet_bn.onnx", providers, threads)          # name lenet_bn, version "1"
    model = load_model("repo/lenet_bn/2/model.onnx", providers, threads, name="lenet_bn", version="2")

Class labels come from a Triton label file when the repository's configuration
names one, else from the file's "labels" metadata (a JSON list, which
python -m export.onnx writes), else there are none.

With cuda_graph_batches (--cuda-graph-batches 1,8,32) a model on the CUDA
provider runs through CUDA graphs captured at load time, one per batch size
(CapturedBatches): a batch is padded up to the smallest captured size that
holds it, and one larger than the largest runs as chunks of the largest.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

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


# --- CUDA graphs ----------------------------------------------------------------

def parse_graph_batches(text: str) -> Tuple[int, ...]:
    """--cuda-graph-batches "1,8,32" -> (1, 8, 32): ascending, each once; ValueError naming a bad size."""
    sizes = set()
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"batch sizes must be positive integers, comma-separated (like 1,8,32); got {item!r}")
        sizes.add(int(item))
    return tuple(sorted(sizes))


def batch_plan(rows: int, sizes: Sequence[int]) -> List[Tuple[int, int]]:
    """How a batch of `rows` rows runs on graphs captured for `sizes` (ascending):
    a list of (rows, captured size) runs, each padded up to its size. Up to the
    largest size, one run of the smallest size that holds the rows; beyond it,
    runs of the largest size and one for the rest. Chunks, rather than one plain
    run, keep every run on a captured graph, so that device memory stays what
    the capture allocated and no run is an uncaptured exception."""
    if rows < 0 or not sizes:
        raise ValueError(f"no plan for {rows} rows over the sizes {list(sizes)}")
    largest, plan = sizes[-1], []
    while rows > largest:
        plan.append((largest, largest))
        rows -= largest
    plan.append((rows, next(size for size in sizes if size >= rows)))  # 0 rows: an empty slice of the smallest
    return plan


@dataclasses.dataclass
class _GraphSlot:
    """One captured batch size: its bound device buffers and the host staging batch."""

    binding: onnxruntime.IOBinding
    run_options: onnxruntime.RunOptions
    staging: np.ndarray  # (size, C, H, W) on the host: the rows, then zero padding
    input: onnxruntime.OrtValue
    outputs: List[onnxruntime.OrtValue]


class CapturedBatches:
    """Runs of fixed batch sizes through preallocated OrtValues bound once:
    what CUDA graphs need, since a captured graph replays on the very device
    addresses and shapes it was captured with. Each request's rows are copied
    into the input buffer in place (OrtValue.update_inplace), padded with zero
    rows, and only the real rows of the outputs are returned.

    All sizes share one session: onnxruntime (1.31 here) keys a session's
    graphs by the run option "gpu_graph_id", so each size gets its own graph
    (its id is the batch size) over one copy of the weights, instead of one
    session per size. The first run of an id captures its graph (onnxruntime
    runs it as often as its provider needs before capturing); later runs
    replay it. On device "cpu" (the tests, without a GPU) the same bindings and
    runs are made and the graph id is ignored by the CPU provider."""

    def __init__(self, session: onnxruntime.InferenceSession, input_spec: TensorSpec, outputs: Sequence[TensorSpec],
                 sizes: Sequence[int], device: str = "cuda", path: str = ""):
        self.session = session
        self.sizes = tuple(sorted(sizes))
        self.device = device
        # The batcher runs one batch at a time, but the buffers are shared state: the
        # lock keeps two runs from ever filling the same slot at once whoever calls.
        self._lock = threading.Lock()
        for spec in outputs:
            if any(d < 1 for d in spec.shape[1:]):
                raise ServeError(f"{path}: output '{spec.name}' has the shape {list(spec.shape)}; CUDA graphs "
                                 "need every output dimension but the batch fixed")
        self._slots: Dict[int, _GraphSlot] = {}
        for size in self.sizes:
            binding = session.io_binding()
            value = onnxruntime.OrtValue.ortvalue_from_shape_and_type(
                [size, *input_spec.shape[1:]], np.float32, device, 0)
            binding.bind_ortvalue_input(input_spec.name, value)
            output_values = []
            for spec in outputs:
                output = onnxruntime.OrtValue.ortvalue_from_shape_and_type(
                    [size, *spec.shape[1:]], protocol.DATATYPES[spec.datatype], device, 0)
                binding.bind_ortvalue_output(spec.name, output)
                output_values.append(output)
            run_options = onnxruntime.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(size))
            self._slots[size] = _GraphSlot(binding, run_options, np.zeros((size, *input_spec.shape[1:]), np.float32),
                                           value, output_values)

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        parts, start = [], 0
        with self._lock:
            for rows, size in batch_plan(len(batch), self.sizes):
                slot = self._slots[size]
                slot.staging[:rows] = batch[start:start + rows]
                slot.staging[rows:] = 0  # padding: a previous request's rows never run again
                slot.input.update_inplace(slot.staging)
                self.session.run_with_iobinding(slot.binding, slot.run_options)
                # A copy: on the CPU numpy() can be a view of the buffer the next run overwrites.
                parts.append([np.array(value.numpy()[:rows]) for value in slot.outputs])
                start += rows
        return parts[0] if len(parts) == 1 else [np.concatenate(chunks) for chunks in zip(*parts)]

    def capture(self) -> None:
        """One run of each size: captures every graph, so that no request pays for a capture."""
        for size in self.sizes:
            self.run(np.zeros((size, *self._slots[size].staging.shape[1:]), np.float32))


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
    # The CUDA graphs of --cuda-graph-batches, or None.
    graphs: Optional[CapturedBatches] = None
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
        if self.graphs is not None:
            return self.graphs.run(batch)
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
        onnxruntime's lazy initialisation (or TensorRT's engine build), or one
        per captured batch size, which captures the CUDA graphs; its seconds."""
        started = time.perf_counter()
        if self.graphs is not None:
            self.graphs.capture()
        else:
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
        if self.graphs is not None:
            # Triton's field for the same thing; its batch_size is 0 for a model without batching.
            config["optimization"] = {"cuda": {"graphs": True, "graph_spec": [
                {"batch_size": 0 if self.fixed_batch else size} for size in self.graphs.sizes]}}
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
               io_binding: str = "auto", cuda_graph_batches: Sequence[int] = ()) -> ServedModel:
    """An onnxruntime session for `path`, served as `name` (default: the file's
    stem) and `version`, and warmed up; `labels` override the file's own;
    `providers` as onnxruntime takes them (names, or (name, options) pairs).
    io_binding: "auto" (on a GPU provider), "always" (on the CPU too), "never".
    cuda_graph_batches: batch sizes to capture CUDA graphs for (the CUDA
    provider's enable_cuda_graph is set here), or none.
    ServeError with the reason if it cannot be served."""
    if not os.path.isfile(path):
        raise ServeError(f"{path}: no such file (export one with: python -m export.onnx --model NAME)")
    if cuda_graph_batches:
        providers = _with_cuda_graph(providers, io_binding)
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
    if cuda_graph_batches:
        model.graphs = CapturedBatches(session, spec, output_specs,
                                       _graph_sizes(model, session.get_providers()[0], cuda_graph_batches), "cuda", path)
    try:
        seconds = model.warm_up()
    except Exception as error:  # noqa: BLE001 -- onnxruntime's errors
        what = "the warm-up runs capturing the CUDA graphs" if model.graphs else "the warm-up run"
        raise ServeError(f"{path}: {what} failed: {str(error).strip().splitlines()[0]}") from None
    log.debug("model %s version %s: warm-up %.1f ms", name, version, seconds * 1000)
    return model


def _with_cuda_graph(providers: Sequence, io_binding: str) -> list:
    """`providers` with the CUDA provider's enable_cuda_graph set; ServeError
    when CUDA graphs cannot be had (no CUDA provider, IOBinding turned off)."""
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
    if "CUDAExecutionProvider" not in names:
        raise ServeError(f"--cuda-graph-batches needs onnxruntime's CUDA execution provider, and the providers "
                         f"are {', '.join(names)} (use --providers cuda,cpu)")
    if io_binding == "never":
        raise ServeError("--cuda-graph-batches runs through IOBinding (the graphs read and write fixed device "
                         "buffers); it cannot be combined with --io-binding never")
    chosen = []
    for provider in providers:
        name, options = (provider[0], dict(provider[1])) if isinstance(provider, (tuple, list)) else (provider, {})
        if name == "CUDAExecutionProvider":
            options["enable_cuda_graph"] = "1"
        chosen.append((name, options) if options else name)
    return chosen


def _graph_sizes(model: ServedModel, provider: str, sizes: Sequence[int]) -> Tuple[int, ...]:
    """The batch sizes to capture for `model`; ServeError when they cannot be."""
    if provider != "CUDAExecutionProvider":
        # No silent fallback: padded fixed-size runs on another provider would be
        # slower than plain runs, and the operator asked for CUDA graphs.
        raise ServeError(f"{model.path}: --cuda-graph-batches needs onnxruntime's CUDA execution provider, but the "
                         f"model runs on {provider} (no usable GPU, CUDA 13/cuDNN 9 libraries missing, or another "
                         "provider first in --providers)")
    if model.fixed_batch is not None:
        # A fixed-batch model runs only its own batch: that is the one graph to capture.
        if model.fixed_batch not in sizes:
            raise ServeError(f"{model.path}: the model was exported with a fixed batch of {model.fixed_batch}, "
                             f"which --cuda-graph-batches {','.join(map(str, sizes))} does not name")
        return (model.fixed_batch,)
    return tuple(sorted(sizes))


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
