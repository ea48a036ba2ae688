// pycnn._C.<op>(...): the entry of pycnn.functional's eager calls of the five
// forward operators, with the arguments of torch.ops.pycnn.<op>.
//
// torch.ops.pycnn.<op>(...) converts every call's Python arguments to IValues
// by the operator's schema (overload matching, generic conversion of each
// argument, a __torch_function__ lookup) and its results back: about 5 µs of
// a small pooling layer's forward on the 2-core VMs, where native's generated
// Python bindings take under 1 µs (python -m pycnn.bench overhead;
// BENCHMARKS.md). These entries parse the arguments pycnn.functional passes
// -- plain tensors (torch.Tensor or nn.Parameter), lists of two Python ints,
// bools, floats, None -- and call the operator through the dispatcher, which
// is where everything else that sees a call lives: autograd, torch.func,
// fake and other __torch_dispatch__ tensors and modes, the profiler, the JIT
// tracer. Any other call is handed to torch.ops.pycnn.<op> unchanged and
// behaves exactly as it did: a tensor subclass or a mode with
// __torch_function__, SymInts, keyword arguments, and every wrong argument
// (whose error is the schema's).
//
// torch.compile and torch.export trace torch.ops.pycnn.<op> instead, and
// TorchScript compiles it: pycnn.functional calls these entries only outside
// them.
#include "eager_entry.h"

#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <array>
#include <optional>
#include <tuple>

#include "typed_op.h"

namespace pycnn {
namespace {

using at::IntArrayRef;
using at::Tensor;
using Pair = std::array<int64_t, 2>;

// --- arguments ----------------------------------------------------------------
// Each parse returns false, leaving no Python error set, for anything that is
// not exactly what it takes; the call then goes to torch.ops.

bool parse(PyObject* obj, Tensor& out) {
  if (!THPVariable_CheckExact(obj)) {  // a subclass may have its own __torch_function__
    return false;
  }
  out = THPVariable_Unpack(obj);
  return true;
}

bool parse(PyObject* obj, std::optional<Tensor>& out) {
  if (obj == Py_None) {
    out.reset();
    return true;
  }
  Tensor tensor;
  if (!parse(obj, tensor)) {
    return false;
  }
  out = std::move(tensor);
  return true;
}

bool parse(PyObject* obj, int64_t& out) {
  if (!PyLong_CheckExact(obj)) {  // not a bool, a SymInt, a numpy integer...
    return false;
  }
  int overflow = 0;
  out = PyLong_AsLongLongAndOverflow(obj, &overflow);
  return overflow == 0;  // beyond int64: the schema's error
}

bool parse(PyObject* obj, std::optional<int64_t>& out) {
  if (obj == Py_None) {
    out.reset();
    return true;
  }
  int64_t value = 0;
  if (!parse(obj, value)) {
    return false;
  }
  out = value;
  return true;
}

bool parse(PyObject* obj, Pair& out) {
  const bool list = PyList_CheckExact(obj);
  if (!list && !PyTuple_CheckExact(obj)) {
    return false;
  }
  if ((list ? PyList_GET_SIZE(obj) : PyTuple_GET_SIZE(obj)) != 2) {
    return false;
  }
  for (Py_ssize_t i = 0; i < 2; ++i) {
    if (!parse(list ? PyList_GET_ITEM(obj, i) : PyTuple_GET_ITEM(obj, i), out[i])) {
      return false;
    }
  }
  return true;
}

bool parse(PyObject* obj, bool& out) {
  if (obj != Py_True && obj != Py_False) {
    return false;
  }
  out = obj == Py_True;
  return true;
}

bool parse(PyObject* obj, double& out) {
  if (!PyFloat_CheckExact(obj)) {
    return false;
  }
  out = PyFloat_AS_DOUBLE(obj);
  return true;
}

// Whether the call's nargs positional arguments parse into values, one each;
// never with a torch function mode active (it must see the call).
template <typename... Values>
bool parse_all(PyObject* const* args, Py_ssize_t nargs, Values&... values) {
  if (nargs != static_cast<Py_ssize_t>(sizeof...(Values)) || at::impl::torch_function_mode_enabled()) {
    return false;
  }
  Py_ssize_t i = 0;
  return (parse(args[i++], values) && ...);
}

// --- results ------------------------------------------------------------------

PyObject* wrap(Tensor tensor) {
  return THPVariable_Wrap(std::move(tensor));
}

template <typename... Tensors>
PyObject* wrap(std::tuple<Tensors...> tensors) {
  PyObject* tuple = PyTuple_New(sizeof...(Tensors));
  if (tuple == nullptr) {
    return nullptr;
  }
  Py_ssize_t i = 0;
  std::apply([&](auto&... tensor) { (PyTuple_SET_ITEM(tuple, i++, wrap(std::move(tensor))), ...); }, tensors);
  return tuple;
}

// The operator's call, without the GIL (as torch.ops and native release it:
// another thread may run Python meanwhile), its results as Python objects.
template <typename Call>
PyObject* call_without_gil(const Call& call) {
  decltype(call()) results;
  {
    const pybind11::gil_scoped_release no_gil;
    results = call();
  }
  return wrap(std::move(results));
}

// torch.ops.pycnn.<name>(*args), for the calls the entries do not take.
PyObject* call_torch_ops(const char* name, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  static PyObject* const pycnn_ops = [] {
    py::object ops = py::module_::import("torch").attr("ops").attr("pycnn");
    return ops.release().ptr();  // kept for the life of the process
  }();
  const py::object packet = py::reinterpret_steal<py::object>(PyObject_GetAttrString(pycnn_ops, name));
  if (!packet) {
    return nullptr;
  }
  return PyObject_Vectorcall(packet.ptr(), args, static_cast<size_t>(nargs), kwnames);
}

// --- the five forward operators -------------------------------------------------

PyObject* corr2d(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  HANDLE_TH_ERRORS
  static const auto op = typed_op<Tensor(
      const Tensor&, const Tensor&, const std::optional<Tensor>&, IntArrayRef, IntArrayRef, IntArrayRef, int64_t)>(
      "pycnn::corr2d");
  Tensor input, weight;
  std::optional<Tensor> bias;
  Pair stride, padding, dilation;
  int64_t groups = 1;
  if (kwnames != nullptr || !parse_all(args, nargs, input, weight, bias, stride, padding, dilation, groups)) {
    return call_torch_ops("corr2d", args, nargs, kwnames);
  }
  return call_without_gil([&] { return op.call(input, weight, bias, stride, padding, dilation, groups); });
  END_HANDLE_TH_ERRORS
}

PyObject* max_pool2d(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  HANDLE_TH_ERRORS
  static const auto op =
      typed_op<std::tuple<Tensor, Tensor>(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool)>(
          "pycnn::max_pool2d");
  Tensor input;
  Pair kernel_size, stride, padding, dilation;
  bool ceil_mode = false;
  if (kwnames != nullptr || !parse_all(args, nargs, input, kernel_size, stride, padding, dilation, ceil_mode)) {
    return call_torch_ops("max_pool2d", args, nargs, kwnames);
  }
  return call_without_gil([&] { return op.call(input, kernel_size, stride, padding, dilation, ceil_mode); });
  END_HANDLE_TH_ERRORS
}

PyObject* avg_pool2d(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  HANDLE_TH_ERRORS
  static const auto op =
      typed_op<Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, bool, bool, std::optional<int64_t>)>(
          "pycnn::avg_pool2d");
  Tensor input;
  Pair kernel_size, stride, padding;
  bool ceil_mode = false, count_include_pad = true;
  std::optional<int64_t> divisor_override;
  if (kwnames != nullptr ||
      !parse_all(args, nargs, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)) {
    return call_torch_ops("avg_pool2d", args, nargs, kwnames);
  }
  return call_without_gil(
      [&] { return op.call(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override); });
  END_HANDLE_TH_ERRORS
}

PyObject* adaptive_avg_pool2d(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  HANDLE_TH_ERRORS
  static const auto op = typed_op<Tensor(const Tensor&, IntArrayRef)>("pycnn::adaptive_avg_pool2d");
  Tensor input;
  Pair output_size;
  if (kwnames != nullptr || !parse_all(args, nargs, input, output_size)) {
    return call_torch_ops("adaptive_avg_pool2d", args, nargs, kwnames);
  }
  return call_without_gil([&] { return op.call(input, output_size); });
  END_HANDLE_TH_ERRORS
}

PyObject* batch_norm(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  HANDLE_TH_ERRORS
  static const auto op = typed_op<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const std::optional<Tensor>&, const std::optional<Tensor>&, const std::optional<Tensor>&,
      const std::optional<Tensor>&, bool, double, double)>("pycnn::batch_norm");
  Tensor input;
  std::optional<Tensor> weight, bias, running_mean, running_var;
  bool training = false;
  double momentum = 0.1, eps = 1e-5;
  if (kwnames != nullptr ||
      !parse_all(args, nargs, input, weight, bias, running_mean, running_var, training, momentum, eps)) {
    return call_torch_ops("batch_norm", args, nargs, kwnames);
  }
  return call_without_gil(
      [&] { return op.call(input, weight, bias, running_mean, running_var, training, momentum, eps); });
  END_HANDLE_TH_ERRORS
}

template <auto Function>
PyMethodDef entry(const char* name, const char* doc) {
  return {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Function)), METH_FASTCALL | METH_KEYWORDS,
          doc};
}

}  // namespace

std::vector<PyMethodDef> eager_entries() {
  return {
      entry<&corr2d>("corr2d", "torch.ops.pycnn.corr2d, for pycnn.functional's eager calls"),
      entry<&max_pool2d>("max_pool2d", "torch.ops.pycnn.max_pool2d, for pycnn.functional's eager calls"),
      entry<&avg_pool2d>("avg_pool2d", "torch.ops.pycnn.avg_pool2d, for pycnn.functional's eager calls"),
      entry<&adaptive_avg_pool2d>(
          "adaptive_avg_pool2d", "torch.ops.pycnn.adaptive_avg_pool2d, for pycnn.functional's eager calls"),
      entry<&batch_norm>("batch_norm", "torch.ops.pycnn.batch_norm, for pycnn.functional's eager calls"),
  };
}

}  // namespace pycnn
