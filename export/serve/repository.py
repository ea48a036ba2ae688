"""The models being served, by name and version, from ONNX files or from a
Triton model repository, with Triton's model-repository extension.

    repository = ModelRepository.from_files(["exports/lenet_bn.onnx"], settings)   # version "1" each
    repository = ModelRepository.from_directory("triton", settings)              # Triton's layout
    await repository.start()
    model = repository.get("lenet_bn")            # the newest ready version; get(name, "2") for one
    await repository.load("resnet18"); await repository.unload("lenet_bn")       # repository only
    await repository.stop()

A repository directory holds one folder per model, in Triton's layout, which is
exactly what ``python -m export.onnx --triton-repo DIR`` writes::

    DIR/NAME/config.pbtxt          Triton's model configuration (text protobuf)
    DIR/NAME/labels.txt            the label file an output's label_filename names
    DIR/NAME/VERSION/model.onnx    one folder per version, VERSION a positive integer

Which versions serve follows the configuration's version_policy as Triton
does: ``latest { num_versions: N }`` (the N highest; the default is the
newest one), ``all``, or ``specific { versions: [...] }``. The configuration is
parsed with Triton's own schema (tritonclient's model_config_pb2), so a field
Triton would refuse is refused here too, by name.

Loading happens at start-up (every model; a model that cannot be served stops
the start with its reason) and on ``load`` (a model re-read from disk: new
versions appear, removed ones go; if it cannot be served, the versions already
serving stay and the reason is answered). ``unload`` stops routing requests to
a model at once, lets the requests already accepted finish, then frees it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.serve.batching import DynamicBatcher, Overloaded, ShuttingDown, Timing, WaitTimeout
from export.serve.models import ServedModel, ServeError, load_model
from export.serve.protocol import ProtocolError

log = logging.getLogger("export.serve")

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILE = "model.onnx"
ONNX_PLATFORMS = ("onnxruntime_onnx",)


@dataclasses.dataclass
class Settings:
    """How every model is run: onnxruntime providers and threads, batching and overload limits."""

    providers: list  # as onnxruntime takes them: names, or (name, options)
    threads: int = 0
    max_batch: int = 32
    batch_timeout_ms: float = 0.0
    max_queue: int = 512
    request_timeout_ms: float = 0.0  # 0: a request may wait for its run as long as it takes
    io_binding: str = "auto"  # "auto": on a GPU provider; "always"; "never"
    cuda_graph_batches: Tuple[int, ...] = ()  # batch sizes run through CUDA graphs (--cuda-graph-batches)
    # (model name) -> the observer of each run's (rows, seconds), for the metrics
    on_batch: Optional[Callable[[str], Callable[[int, float], None]]] = None

    def __post_init__(self):
        if self.cuda_graph_batches and self.max_batch > max(self.cuda_graph_batches):
            # Batches of up to --max-batch rows would otherwise run as chunks, every full
            # batch paying several replays for what one run of its size would do.
            raise ServeError(f"--max-batch {self.max_batch} is larger than the largest of --cuda-graph-batches "
                             f"{','.join(map(str, self.cuda_graph_batches))}: capture {self.max_batch} too, or "
                             f"lower --max-batch to {max(self.cuda_graph_batches)}")


@dataclasses.dataclass
class _Entry:
    """One model name: its serving versions, and its state as the index reports it."""

    versions: Dict[str, ServedModel]
    state: str = "READY"
    reason: str = ""


class ModelRepository:
    def __init__(self, settings: Settings, directory: Optional[str] = None):
        self.settings = settings
        self.directory = directory  # None: served from files, no load/unload
        self._entries: Dict[str, _Entry] = {}
        self._started = False
        self._lock = asyncio.Lock()  # one load or unload at a time

    # --- building ---------------------------------------------------------------

    @classmethod
    def from_files(cls, paths: Sequence[str], settings: Settings) -> "ModelRepository":
        """Each ONNX file is a model named by its file's stem, version "1"."""
        repository = cls(settings)
        for path in paths:
            model = load_model(path, settings.providers, settings.threads, io_binding=settings.io_binding,
                               cuda_graph_batches=settings.cuda_graph_batches)
            if model.name in repository._entries:
                other = repository._entries[model.name].versions[model.version].path
                raise ServeError(f"{path} and {other} would both be served as '{model.name}'; rename one")
            repository._entries[model.name] = _Entry({model.version: model})
        return repository

    @classmethod
    def from_directory(cls, directory: str, settings: Settings) -> "ModelRepository":
        """Every model of a Triton repository directory, at the versions its policy names."""
        if not os.path.isdir(directory):
            raise ServeError(f"--model-repository {directory}: no such directory "
                             "(write one with: python -m export.onnx --model NAME --triton-repo DIR)")
        repository = cls(settings, directory)
        names = sorted(n for n in os.listdir(directory) if os.path.isdir(os.path.join(directory, n)))
        if not names:
            raise ServeError(f"--model-repository {directory}: no model folders in it")
        for name in names:
            repository._entries[name] = _Entry(repository._read(name))
        return repository

    def _read(self, name: str) -> Dict[str, ServedModel]:
        """The versions of repository model `name` its policy serves, loaded; ServeError if it cannot serve."""
        folder = os.path.join(self.directory, name)
        config = read_config(folder, name)
        labels = read_labels(folder, config)
        available = sorted((int(v) for v in os.listdir(folder) if v.isdigit() and int(v) > 0
                            and os.path.isdir(os.path.join(folder, v))))
        chosen = versions_to_serve(config, available, folder)
        filename = config.default_model_filename or DEFAULT_MODEL_FILE
        models = {}
        for version in chosen:
            path = os.path.join(folder, str(version), filename)
            models[str(version)] = load_model(path, self.settings.providers, self.settings.threads, name=name,
                                              version=str(version), labels=labels,
                                              io_binding=self.settings.io_binding,
                                              cuda_graph_batches=self.settings.cuda_graph_batches)
        return models

    # --- lifecycle --------------------------------------------------------------

    def _batcher(self, model: ServedModel) -> DynamicBatcher:
        settings = self.settings
        # A fixed-batch model can only run the batches it was exported with.
        limit = model.fixed_batch or settings.max_batch
        on_batch = settings.on_batch(model.name) if settings.on_batch else None
        return DynamicBatcher(model.run, limit, settings.batch_timeout_ms / 1000, f"{model.name}:{model.version}",
                              on_batch, max_queue=settings.max_queue, on_execution=model.statistics.record_execution)

    async def _start_models(self, models) -> None:
        for model in models:
            model.batcher = self._batcher(model)
            await model.batcher.start()

    @staticmethod
    async def _drain_and_stop(models) -> None:
        for model in models:
            if model.batcher is not None:
                await model.batcher.drain()
                await model.batcher.stop()

    async def start(self) -> None:
        await self._start_models(self.all_models())
        self._started = True

    async def stop(self) -> None:
        self._started = False
        for model in self.all_models():
            if model.batcher is not None:
                await model.batcher.stop()

    # --- lookups ----------------------------------------------------------------

    def all_models(self) -> List[ServedModel]:
        """Every version being served, by name then version."""
        return [model for _, entry in sorted(self._entries.items())
                for _, model in sorted(entry.versions.items(), key=lambda item: int(item[0]))]

    def names(self) -> List[str]:
        return sorted(name for name, entry in self._entries.items() if entry.versions)

    def versions(self, name: str) -> List[str]:
        entry = self._entries.get(name)
        return sorted(entry.versions, key=int) if entry else []

    def get(self, name: str, version: Optional[str] = None) -> ServedModel:
        """The model to answer a request: `version`, or the newest one; ProtocolError 404 otherwise."""
        entry = self._entries.get(name)
        if entry is None:
            served = ", ".join(self.names()) or "no model"
            raise ProtocolError(f"unknown model {name!r}; this server serves {served}", 404)
        if not entry.versions:
            raise ProtocolError(f"model {name!r} is not loaded ({entry.reason or entry.state.lower()}); "
                                f"load it with POST /v2/repository/models/{name}/load", 404)
        if version is None:
            return entry.versions[max(entry.versions, key=int)]
        if version not in entry.versions:
            raise ProtocolError(f"model {name!r} has no version {version!r}; it serves version(s) "
                                f"{', '.join(self.versions(name))}", 404)
        return entry.versions[version]

    def index(self, ready_only: bool = False) -> List[dict]:
        """Triton's repository index: one entry per served version, and one per
        model that serves none (state UNAVAILABLE, with the reason)."""
        rows = []
        for name, entry in sorted(self._entries.items()):
            if entry.versions:
                rows.extend({"name": name, "version": version, "state": "READY", "reason": ""}
                            for version in self.versions(name))
            elif not ready_only:
                rows.append({"name": name, "version": "", "state": entry.state, "reason": entry.reason})
        if self.directory and not ready_only:  # folders added since the start: not loaded yet
            known = set(self._entries)
            rows.extend({"name": n, "version": "", "state": "UNAVAILABLE", "reason": "not loaded"}
                        for n in sorted(os.listdir(self.directory))
                        if n not in known and os.path.isdir(os.path.join(self.directory, n)))
        return rows

    def known(self, name: str) -> bool:
        """Whether `name` is a model of this server (loaded or not): a metrics label."""
        return name in self._entries

    # --- inference --------------------------------------------------------------

    async def infer(self, model: ServedModel, rows: np.ndarray) -> List[np.ndarray]:
        """The model's outputs for `rows`, through its batcher, with its
        statistics; overload answers as ProtocolError: 503 with Retry-After
        (queue full, or shutting down), 504 (waited too long)."""
        timeout_ms = self.settings.request_timeout_ms
        started, timing = time.perf_counter(), Timing()
        try:
            outputs = await model.batcher.infer(rows, timeout_ms / 1000 if timeout_ms > 0 else None, timing)
        except Exception as error:  # noqa: BLE001 -- every failure is counted, then answered
            model.statistics.record_failure(time.perf_counter() - started)
            if isinstance(error, (Overloaded, ShuttingDown)):
                raise ProtocolError(str(error), 503, {"Retry-After": "1"}) from None
            if isinstance(error, WaitTimeout):
                raise ProtocolError(str(error), 504) from None
            raise ProtocolError(f"inference failed: {str(error).strip().splitlines()[0]}", 500) from None
        model.statistics.record_success(len(rows), timing, time.perf_counter() - started)
        return outputs

    # --- the repository extension -----------------------------------------------

    def _require_directory(self, action: str) -> None:
        if self.directory is None:
            raise ProtocolError(f"{action} needs a model repository: start the server with "
                                "--model-repository DIR (it serves files now)", 400)

    async def load(self, name: str) -> None:
        """(Re)load model `name` from the repository; its served versions follow the folder and policy."""
        self._require_directory("loading a model")
        if os.sep in name or name in ("", ".", "..") or not os.path.isdir(os.path.join(self.directory, name)):
            raise ProtocolError(f"the model repository has no model {name!r}", 404)
        async with self._lock:
            try:
                models = await asyncio.get_running_loop().run_in_executor(None, self._read, name)
            except ServeError as error:
                entry = self._entries.get(name)
                if entry is not None and not entry.versions:
                    entry.reason = str(error)
                raise ProtocolError(f"failed to load {name!r}: {error}", 400) from None
            if self._started:
                await self._start_models(models.values())
            old = self._entries.get(name)
            self._entries[name] = _Entry(models)
            log.info("model %s: loaded version(s) %s", name, ", ".join(self.versions(name)))
            if old is not None:
                await self._drain_and_stop(old.versions.values())

    async def unload(self, name: str) -> None:
        """Stop serving model `name`: no new requests; those accepted finish first."""
        self._require_directory("unloading a model")
        async with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise ProtocolError(f"unknown model {name!r}", 404)
            versions, entry.versions = list(entry.versions.values()), {}
            entry.state, entry.reason = "UNAVAILABLE", "unloaded"
            await self._drain_and_stop(versions)
            log.info("model %s: unloaded", name)


def read_config(folder: str, name: str) -> model_config_pb2.ModelConfig:
    """NAME/config.pbtxt as Triton's ModelConfig (a minimal one when absent); ServeError naming the problem."""
    path = os.path.join(folder, CONFIG_FILE)
    config = model_config_pb2.ModelConfig()
    if os.path.isfile(path):
        try:
            with open(path) as f:
                text_format.Parse(f.read(), config)
        except (text_format.ParseError, UnicodeDecodeError) as error:
            raise ServeError(f"{path}: not a valid Triton model configuration: {error}") from None
    if config.name and config.name != name:
        raise ServeError(f"{path}: names the model {config.name!r}, but its folder is {name!r}")
    platform = config.platform or ("onnxruntime_onnx" if config.backend in ("", "onnxruntime") else config.backend)
    if platform not in ONNX_PLATFORMS:
        raise ServeError(f"{path}: platform {platform!r}; export.serve serves ONNX models (onnxruntime_onnx)")
    return config


def read_labels(folder: str, config: model_config_pb2.ModelConfig) -> Optional[List[str]]:
    """The lines of the label file the configuration's first output names, or None."""
    label_files = [output.label_filename for output in config.output if output.label_filename]
    if not label_files:
        return None
    path = os.path.join(folder, label_files[0])
    try:
        with open(path) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except OSError as error:
        raise ServeError(f"{path}: the label file of the configuration cannot be read: {error.strerror}") from None


def versions_to_serve(config: model_config_pb2.ModelConfig, available: Sequence[int], folder: str) -> List[int]:
    """Triton's version policy over the version folders present."""
    if not available:
        raise ServeError(f"{folder}: no version folders (1/model.onnx, 2/model.onnx, ...)")
    policy = config.version_policy.WhichOneof("policy_choice") if config.HasField("version_policy") else None
    if policy == "all":
        return list(available)
    if policy == "specific":
        wanted = sorted(set(config.version_policy.specific.versions))
        missing = [v for v in wanted if v not in available]
        if missing:
            raise ServeError(f"{folder}: version_policy names version(s) {', '.join(map(str, missing))}, "
                             f"which have no folder (present: {', '.join(map(str, available))})")
        return wanted
    count = config.version_policy.latest.num_versions if policy == "latest" else 1
    return list(available)[-max(count, 1):]
