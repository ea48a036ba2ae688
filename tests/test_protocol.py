"""export.serve.protocol on its own: whatever the body, parse_infer_request either
parses it or raises ProtocolError with a message -- never another exception
(which the server would answer with a 500)."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export.serve.protocol import ProtocolError, TensorSpec, infer_response, parse_infer_request

INPUTS = [TensorSpec("input", "FP32", (-1, 1, 2, 2))]
OUTPUTS = [TensorSpec("logits", "FP32", (-1, 3))]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30)
tensor_fields = {
    "name": st.sampled_from(["input", "other"]) | json_values,
    "shape": st.sampled_from([[1, 1, 2, 2], [2, 1, 2, 2]]) | st.lists(st.integers(-1, 3), max_size=5) | json_values,
    "datatype": st.sampled_from(["FP32", "FP64", "BYTES"]) | json_values,
}
tensor_like = (st.fixed_dictionaries(tensor_fields, optional={  # every required field, some of them odd
    "data": st.lists(st.floats(0, 1), min_size=4, max_size=8) | json_values,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.sampled_from([16, 32]) | json_values})
                  | json_values,
}) | st.fixed_dictionaries({}, optional={**tensor_fields, "data": json_values, "parameters": json_values}))
request_like = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=4) | json_values,
    "inputs": st.lists(tensor_like, max_size=3) | json_values,
    "outputs": st.lists(st.fixed_dictionaries({}, optional={"name": st.sampled_from(["logits"]) | json_values,
                                                            "parameters": json_values}), max_size=2) | json_values,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": json_values}) | json_values,
})


@settings(max_examples=1000, deadline=None)
@given(request=request_like | json_values, binary=st.binary(max_size=40),
       header=st.none() | st.integers(-5, 400).map(str) | st.text(max_size=4))
def test_any_body_parses_or_gives_a_protocol_error(request, binary, header):
    body = json.dumps(request).encode()
    if header is not None and header.lstrip("-").isdigit():
        body += binary
    try:
        parsed = parse_infer_request(body, header, "m", INPUTS, OUTPUTS)
    except ProtocolError as error:
        assert error.status == 400 and error.message
        return
    assert parsed.inputs["input"].dtype == np.float32 and parsed.inputs["input"].shape[1:] == (1, 2, 2)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=60))
def test_any_bytes_parse_or_give_a_protocol_error(body):
    with pytest.raises(ProtocolError):
        parse_infer_request(body, None, "m", INPUTS, OUTPUTS)


def test_round_trip_json_and_binary():
    x = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2) / 7
    request = {"id": "r", "inputs": [{"name": "input", "shape": [2, 1, 2, 2], "datatype": "FP32",
                                      "data": x.ravel().tolist()}], "outputs": [{"name": "logits"}]}
    parsed = parse_infer_request(json.dumps(request).encode(), None, "m", INPUTS, OUTPUTS)
    np.testing.assert_array_equal(parsed.inputs["input"], x)
    logits = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    body, headers = infer_response("m", "1", parsed, {"logits": logits}, {"logits": OUTPUTS[0]})
    answer = json.loads(body)
    assert headers["content-type"] == "application/json" and answer["id"] == "r"
    np.testing.assert_array_equal(np.asarray(answer["outputs"][0]["data"], np.float32).reshape(2, 3), logits)

    header = json.dumps({"inputs": [{"name": "input", "shape": [2, 1, 2, 2], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 32}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    parsed = parse_infer_request(header + x.tobytes(), str(len(header)), "m", INPUTS, OUTPUTS)
    np.testing.assert_array_equal(parsed.inputs["input"], x)
    body, headers = infer_response("m", "1", parsed, {"logits": logits}, {"logits": OUTPUTS[0]})
    length = int(headers["Inference-Header-Content-Length"])
    assert json.loads(body[:length])["outputs"][0]["parameters"] == {"binary_data_size": 24}
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f4").reshape(2, 3), logits)
