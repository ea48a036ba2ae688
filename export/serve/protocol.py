"""The KServe v2 inference protocol (Triton's HTTP/REST protocol) for export.serve:
tensor metadata, parsing an infer request, building its response.

Both encodings of tensor data are understood, so Triton's and KServe's clients
work unchanged:

- JSON: ``{"inputs": [{"name", "shape", "datatype", "data"}]}`` with ``data``
  flat or nested in row-major order;
- Triton's binary tensor extension: the body is a JSON header of
  ``Inference-Header-Content-Length`` bytes followed by the raw tensors, each
  input saying its size in ``parameters.binary_data_size``; an output is sent
  back raw when the request asks for it (``parameters.binary_data`` on the
  output, or ``binary_data_output`` on the request).

Every problem with a request is a ProtocolError whose message names the field
and what was expected; the server answers it as ``{"error": message}`` with a
4xx status.

Specifications:
https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import orjson

HEADER_LENGTH = "Inference-Header-Content-Length"
# What the server metadata lists: Triton's extensions, and pycnn's own (classify, metrics).
SERVER_EXTENSIONS = ["binary_tensor_data", "classification", "statistics", "model_repository", "classify", "metrics"]
BINARY_CONTENT_TYPE = "application/octet-stream"

# KServe v2 datatypes <-> numpy (BYTES, variable-length strings, has no numpy dtype here).
DATATYPES: Dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
# onnxruntime's type names of the same.
ONNX_TYPES = {f"tensor({name})": datatype for name, datatype in (
    ("bool", "BOOL"), ("uint8", "UINT8"), ("uint16", "UINT16"), ("uint32", "UINT32"), ("uint64", "UINT64"),
    ("int8", "INT8"), ("int16", "INT16"), ("int32", "INT32"), ("int64", "INT64"),
    ("float16", "FP16"), ("float", "FP32"), ("double", "FP64"))}


class ProtocolError(Exception):
    """A request the server cannot accept; answered as {"error": message} with
    `status` (and `headers`, e.g. Retry-After on a 503)."""

    def __init__(self, message: str, status: int = 400, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the protocol describes it; -1 marks the dynamic batch."""

    name: str
    datatype: str
    shape: Tuple[int, ...]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def accepts(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(want in (-1, got) for want, got in zip(self.shape, shape))


@dataclasses.dataclass
class InferRequest:
    """A parsed infer request: its id, one array per model input, the outputs to
    return (all when the request names none), which of them go back raw, and
    which as Triton's classification (output name -> how many classes)."""

    id: Optional[str]
    inputs: Dict[str, np.ndarray]
    outputs: List[str]
    binary_outputs: set
    classification: Dict[str, int] = dataclasses.field(default_factory=dict)


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ProtocolError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def split_body(body: bytes, header_length: Optional[str]) -> Tuple[bytes, bytes]:
    """(JSON part, binary part) of a request body; the binary part is empty
    unless the Inference-Header-Content-Length header is given."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    _require(0 <= length <= len(body),
             f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
    return body[:length], body[length:]


def load_json(text: bytes) -> Any:
    # orjson: a 96x96 image as JSON parses in a tenth of the time json takes.
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise ProtocolError(f"invalid JSON in the request body: {error}") from None


def _json_data(tensor: dict, spec: TensorSpec, count: int) -> np.ndarray:
    data = tensor["data"]
    where = f"input '{spec.name}'"
    _require(isinstance(data, list), f"{where}: 'data' must be a list of numbers (flat or nested, row-major)")
    try:
        array = np.asarray(data)
    except ValueError:  # ragged nesting
        raise ProtocolError(f"{where}: 'data' is a ragged nested list; nest it as the shape says or send it flat") from None
    # Strings, nulls, booleans and objects are refused rather than converted:
    # "1.5" or true in an FP32 tensor is a client bug worth reporting.
    _require(array.dtype.kind in ("b" if spec.datatype == "BOOL" else "iuf"),
             f"{where}: 'data' must hold numbers only (found {_describe_non_numeric(array)})")
    _require(array.size == count,
             f"{where}: shape {_shape_text(tensor['shape'])} needs {count} values but 'data' has {array.size}")
    return array


def _describe_non_numeric(array: np.ndarray) -> str:
    for value in array.ravel():
        if value is None:
            return "null"
        if isinstance(value, (bool, np.bool_)):
            return "a boolean"
        if isinstance(value, str):
            return f"the string {value[:20]!r}"
        if isinstance(value, (list, dict)):
            return "a nested object"
    return f"values of type {array.dtype}"


def _binary_data(tensor: dict, spec: TensorSpec, count: int, binary: memoryview, offset: int) -> Tuple[np.ndarray, int]:
    where = f"input '{spec.name}'"
    size = tensor["parameters"]["binary_data_size"]
    _require(_is_int(size) and size >= 0, f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
    dtype = DATATYPES[spec.datatype]
    expected = count * dtype.itemsize
    _require(size == expected, f"{where}: binary_data_size is {size} bytes but shape "
                               f"{_shape_text(tensor['shape'])} of {spec.datatype} needs {expected}")
    _require(offset + size <= len(binary),
             f"{where}: binary_data_size {size} runs past the end of the body's binary part ({len(binary)} bytes)")
    array = np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<"))
    return array, offset + size


def parse_infer_request(body: bytes, header_length: Optional[str], model_name: str,
                        inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> InferRequest:
    """Parse and check an infer request body against the model's inputs and outputs."""
    text, binary = split_body(body, header_length)
    return check_infer_request(load_json(text), binary, header_length is not None, model_name, inputs, outputs)


def check_infer_request(request: Any, binary: bytes, has_binary: bool, model_name: str,
                        inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> InferRequest:
    """Check a decoded infer request (the JSON object; `binary` the raw tensors
    after it) against the model's inputs and outputs. gRPC requests come here
    too, in the same form, so that both transports answer a bad request alike."""
    _require(isinstance(request, dict), "the request body must be a JSON object with an 'inputs' list")
    request_id = request.get("id")
    _require(request_id is None or isinstance(request_id, str), f"'id' must be a string, got {request_id!r}")
    _require("inputs" in request, "the request has no 'inputs' (a list of {name, shape, datatype, data} objects)")
    tensors = request["inputs"]
    _require(isinstance(tensors, list) and tensors, "'inputs' must be a non-empty list of input tensors")

    by_name = {spec.name: spec for spec in inputs}
    arrays: Dict[str, np.ndarray] = {}
    view, offset = memoryview(binary), 0
    for index, tensor in enumerate(tensors):
        _require(isinstance(tensor, dict), f"inputs[{index}] must be an object with name, shape, datatype and data")
        missing = [key for key in ("name", "shape", "datatype") if key not in tensor]
        _require(not missing, f"inputs[{index}] has no {', '.join(repr(k) for k in missing)}")
        name = tensor["name"]
        _require(isinstance(name, str), f"inputs[{index}]: 'name' must be a string, got {name!r}")
        _require(name in by_name, f"model '{model_name}' has no input {name!r}; its inputs: "
                                  f"{', '.join(repr(n) for n in by_name)}")
        _require(name not in arrays, f"input '{name}' is given twice")
        spec = by_name[name]
        datatype = tensor["datatype"]
        _require(isinstance(datatype, str) and (datatype in DATATYPES or datatype == "BYTES"),
                 f"input '{name}': unknown datatype {datatype!r} (protocol datatypes: {', '.join(DATATYPES)}, BYTES)")
        _require(datatype == spec.datatype, f"input '{name}': datatype {datatype} does not match the model's {spec.datatype}")
        shape = tensor["shape"]
        _require(isinstance(shape, list) and all(_is_int(d) for d in shape),
                 f"input '{name}': 'shape' must be a list of integers, got {shape!r}")
        _require(spec.accepts(shape) and all(d >= 1 for d in shape),
                 f"input '{name}': shape {_shape_text(shape)} does not match the model's {_shape_text(spec.shape)}"
                 + (" (-1: any size from 1)" if -1 in spec.shape else ""))
        count = math.prod(shape)
        parameters = tensor.get("parameters") or {}
        _require(isinstance(parameters, dict), f"input '{name}': 'parameters' must be an object")
        if "binary_data_size" in parameters:
            _require(has_binary,
                     f"input '{name}' has binary_data_size but the request has no {HEADER_LENGTH} header")
            array, offset = _binary_data(tensor, spec, count, view, offset)
        else:
            _require("data" in tensor, f"input '{name}' has no 'data' (nor parameters.binary_data_size)")
            array = _json_data(tensor, spec, count)
        arrays[name] = array.reshape(shape).astype(DATATYPES[spec.datatype], copy=False)
    _require(offset == len(binary), f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    absent = [spec.name for spec in inputs if spec.name not in arrays]
    _require(not absent, f"the request lacks input(s) {', '.join(repr(n) for n in absent)}")

    requested, binary_outputs, classification = _requested_outputs(request, outputs)
    return InferRequest(request_id, arrays, requested, binary_outputs, classification)


def _requested_outputs(request: dict, outputs: Sequence[TensorSpec]) -> Tuple[List[str], set, Dict[str, int]]:
    known = [spec.name for spec in outputs]
    by_name = {spec.name: spec for spec in outputs}
    parameters = request.get("parameters") or {}
    _require(isinstance(parameters, dict), "'parameters' must be an object")
    all_binary = parameters.get("binary_data_output", False) is True
    wanted = request.get("outputs")
    if wanted is None:
        return known, set(known) if all_binary else set(), {}
    _require(isinstance(wanted, list), "'outputs' must be a list of {name} objects")
    names, binary, classification = [], set(), {}
    for index, output in enumerate(wanted):
        _require(isinstance(output, dict) and "name" in output, f"outputs[{index}] must be an object with a 'name'")
        name = output["name"]
        _require(isinstance(name, str) and name in known, f"the model has no output {name!r}; its outputs: {', '.join(repr(n) for n in known)}")
        names.append(name)
        output_parameters = output.get("parameters") or {}
        _require(isinstance(output_parameters, dict), f"outputs[{index}]: 'parameters' must be an object")
        if output_parameters.get("binary_data", all_binary) is True:
            binary.add(name)
        if "classification" in output_parameters:
            count = output_parameters["classification"]
            _require(_is_int(count) and count >= 1,
                     f"output '{name}': 'classification' must be a positive integer (how many classes), got {count!r}")
            _require(len(by_name[name].shape) == 2,
                     f"output '{name}' has shape {_shape_text(by_name[name].shape)}; classification needs "
                     "(batch, classes)")
            classification[name] = count
    return names or known, binary, classification


def classification_strings(scores: np.ndarray, count: int, labels: Optional[Sequence[str]]) -> np.ndarray:
    """Triton's classification of (N, C) scores: (N, min(count, C)) strings
    "score:index:label" (or "score:index" without labels), highest score first
    (ties: lower index first); the score printed as C's %f, as Triton does."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :count]
    rows = [[f"{float(row[i]):f}:{i}" + (f":{labels[i]}" if labels else "") for i in picks]
            for row, picks in zip(scores, order)]
    return np.array(rows, dtype=object).reshape(len(scores), order.shape[1])


def _bytes_elements(array: np.ndarray) -> List[bytes]:
    return [value if isinstance(value, bytes) else str(value).encode() for value in array.ravel()]


def raw_tensor(array: np.ndarray) -> bytes:
    """A tensor's raw bytes, as the binary extension and gRPC carry them:
    little-endian row-major; BYTES elements each with a 4-byte little-endian length."""
    if array.dtype == object:
        return b"".join(len(e).to_bytes(4, "little") + e for e in _bytes_elements(array))
    array = np.ascontiguousarray(array)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def infer_response(model_name: str, version: str, request: InferRequest,
                   results: Dict[str, np.ndarray], specs: Dict[str, TensorSpec]) -> Tuple[bytes, Dict[str, str]]:
    """The response body and its extra headers: JSON, or JSON header + raw
    tensors when some output is requested binary."""
    response: Dict[str, Any] = {"model_name": model_name, "model_version": version}
    if request.id is not None:
        response["id"] = request.id
    tensors, raw = [], []
    for name in request.outputs:
        array = np.ascontiguousarray(results[name])
        datatype = "BYTES" if array.dtype == object else specs[name].datatype
        tensor = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in request.binary_outputs:
            data = raw_tensor(array)
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        elif datatype == "BYTES":
            tensor["data"] = [e.decode("utf-8", "replace") for e in _bytes_elements(array)]
        else:
            tensor["data"] = array.ravel()  # orjson writes numpy arrays itself, float32 in its shortest form
        tensors.append(tensor)
    response["outputs"] = tensors
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return header, {"content-type": "application/json"}
    return header + b"".join(raw), {"content-type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}
