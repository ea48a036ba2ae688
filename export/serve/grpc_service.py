"""The KServe v2 / Triton gRPC service (``inference.GRPCInferenceService``) over
the same models, batchers, statistics and repository as the HTTP application.

    python -m export.serve exports/lenet_bn.onnx --grpc-port 8001     # the default; 0 turns it off

Served: ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata,
ModelConfig, ModelInfer (tensors in raw_input_contents or typed contents;
outputs always in raw_output_contents, as Triton answers), ModelStatistics,
RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload. The other
methods of Triton's service (shared memory, tracing, logging, streaming) answer
UNIMPLEMENTED.

The messages and the service stub are Triton's published protocol as
generated in tritonclient (service_pb2, model_config_pb2), so Triton's own
gRPC clients work unchanged. An infer request is turned into the JSON form of
the HTTP protocol and checked by the same code (protocol.check_infer_request),
so both transports refuse a bad request with the same message; the HTTP status
becomes its gRPC code (400 INVALID_ARGUMENT, 404 NOT_FOUND, 503 UNAVAILABLE,
504 DEADLINE_EXCEEDED).
"""
from __future__ import annotations

import logging
from typing import List

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from export.serve import protocol
from export.serve.protocol import ProtocolError
from export.serve.repository import ModelRepository
from export.serve.statistics import statistics_response

log = logging.getLogger("export.serve")

STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
                504: grpc.StatusCode.DEADLINE_EXCEEDED}
# InferTensorContents' field of each datatype (the typed alternative to raw bytes).
CONTENTS_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                   "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                   "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                   "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _version(text: str):
    return text or None  # the protocol's "" is "the server's choice"


def _parameter(value):
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def request_as_json(request: service_pb2.ModelInferRequest):
    """(the JSON form of an infer request, its raw tensor bytes, whether any input is raw)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents; "
                            "give raw contents for every input or for none")
    inputs = []
    for index, tensor in enumerate(request.inputs):
        entry = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
        if raw:
            entry["parameters"] = {"binary_data_size": len(raw[index])}
        else:
            field = CONTENTS_FIELDS.get(tensor.datatype)
            entry["data"] = list(getattr(tensor.contents, field)) if field else []
        inputs.append(entry)
    outputs = [{"name": output.name, "parameters": {key: _parameter(value) for key, value in output.parameters.items()}}
               for output in request.outputs]
    body = {"id": request.id or None, "inputs": inputs}
    if outputs:
        body["outputs"] = outputs
    return body, b"".join(raw), bool(raw)


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The gRPC methods, each a thin translation onto the repository."""

    def __init__(self, repository: ModelRepository, state, version: str):
        self.repository = repository
        self.state = state  # the HTTP app's state: one readiness for both transports
        self.version = version

    async def _answer(self, context, call):
        try:
            return await call()
        except ProtocolError as error:
            code = STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)
            await context.abort(code, error.message)

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=bool(self.state.ready))

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="pycnn", version=self.version,
                                                  extensions=protocol.SERVER_EXTENSIONS)

    async def ModelReady(self, request, context):
        async def call():
            self.repository.get(request.name, _version(request.version))
            return service_pb2.ModelReadyResponse(ready=bool(self.state.ready))
        return await self._answer(context, call)

    async def ModelMetadata(self, request, context):
        async def call():
            metadata = self.repository.get(request.name, _version(request.version)).metadata(
                self.repository.versions(request.name))
            return json_format.ParseDict(metadata, service_pb2.ModelMetadataResponse())
        return await self._answer(context, call)

    async def ModelConfig(self, request, context):
        async def call():
            settings = self.repository.settings
            config = self.repository.get(request.name, _version(request.version)).config(
                settings.max_batch, settings.batch_timeout_ms)
            return service_pb2.ModelConfigResponse(
                config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))
        return await self._answer(context, call)

    async def ModelInfer(self, request, context):
        async def call():
            model = self.repository.get(request.model_name, _version(request.model_version))
            body, raw, has_raw = request_as_json(request)
            parsed = protocol.check_infer_request(body, raw, has_raw, model.name, [model.input], model.outputs)
            outputs = await self.repository.infer(model, parsed.inputs[model.input.name])
            results = {spec.name: output for spec, output in zip(model.outputs, outputs)}
            response = service_pb2.ModelInferResponse(model_name=model.name, model_version=model.version,
                                                      id=request.id)
            contents: List[bytes] = []
            for name in parsed.outputs:
                array = results[name]
                datatype = model.output_specs[name].datatype
                if name in parsed.classification:
                    labels = model.labels if name == model.outputs[0].name else None
                    array = protocol.classification_strings(array, parsed.classification[name], labels)
                    datatype = "BYTES"
                response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
                contents.append(protocol.raw_tensor(array))
            response.raw_output_contents.extend(contents)
            return response
        return await self._answer(context, call)

    async def ModelStatistics(self, request, context):
        async def call():
            if request.name:
                models = [self.repository.get(request.name, _version(request.version))]
            else:
                models = self.repository.all_models()
            stats = statistics_response([model.statistics for model in models])
            return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True)
        return await self._answer(context, call)

    async def RepositoryIndex(self, request, context):
        async def call():
            rows = self.repository.index(ready_only=request.ready)
            return service_pb2.RepositoryIndexResponse(models=[service_pb2.RepositoryIndexResponse.ModelIndex(**row)
                                                               for row in rows])
        return await self._answer(context, call)

    async def RepositoryModelLoad(self, request, context):
        async def call():
            await self.repository.load(request.model_name)
            return service_pb2.RepositoryModelLoadResponse()
        return await self._answer(context, call)

    async def RepositoryModelUnload(self, request, context):
        async def call():
            await self.repository.unload(request.model_name)
            return service_pb2.RepositoryModelUnloadResponse()
        return await self._answer(context, call)


async def start_grpc_server(repository: ModelRepository, state, version: str, host: str, port: int) -> grpc.aio.Server:
    """The gRPC server on host:port, started on the running event loop."""
    # Messages as large as the HTTP side accepts (a batch of 96x96 images is several MiB).
    limit = 64 * 2**20
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(repository, state, version), server)
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise OSError(f"--grpc-port {port}: cannot listen on {address} (is the port in use?)")
    await server.start()
    return server
