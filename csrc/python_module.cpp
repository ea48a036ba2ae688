// Makes the operator library importable as the Python module pycnn._C.
// Importing it loads the shared library, whose static initialisers register
// the operators (csrc/pycnn.cpp) and their kernels.
//
// It also holds every operator's Autograd kernel, which sends each call
// where it is cheapest and still exact:
// - a call that needs no derivative -- no input requires grad (torch.no_grad,
//   inference, the backward formulas' own operator calls), no forward-mode
//   tangent, no torch.func transform -- goes straight to the kernels below
//   autograd;
// - a forward operator's call that needs reverse mode alone (a training step)
//   is recorded by a C++ node (first_order_autograd.cpp);
// - every other call -- forward mode, torch.func's transforms, the backward
//   operators' calls when a derivative of a derivative is asked for -- runs
//   the Python derivatives of pycnn/_autograd.py (reverse and forward mode at
//   any order), registered here by _set_autograd_kernel, exactly as a
//   torch.library registration would.
// The first two skip the few microseconds of a Python call each (python -m
// pycnn.bench overhead).
//
// Only the Python extension has this file: the LibTorch library of
// CMakeLists.txt (no Python) registers no Autograd kernel, as before.
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/library.h>

#include <string>
#include <unordered_map>
#include <vector>

#include "eager_entry.h"
#include "first_order_autograd.h"

namespace pycnn {
namespace {

// Operator name (without the namespace) -> its Python Autograd kernel; read
// and written with the GIL held.
std::unordered_map<std::string, py::object>& python_kernels() {
  static auto* kernels = new std::unordered_map<std::string, py::object>();  // never destroyed: outlives Python
  return *kernels;
}

// What a call must be recorded for.
struct Derivatives {
  bool transform = false;      // a torch.func transform is active
  bool reverse = false;        // grad mode is on and an input requires grad
  bool forward_mode = false;   // an input carries a forward-mode tangent
  bool any() const { return transform || reverse || forward_mode; }
};

Derivatives derivatives_needed(const torch::jit::Stack& stack, size_t first, size_t count) {
  Derivatives needed;
  // torch.func's transforms keep their dispatch keys in the thread's
  // included set while any transform is active.
  if (c10::impl::tls_local_dispatch_key_set().included_.has(c10::DispatchKey::FuncTorchDynamicLayerBackMode)) {
    needed.transform = true;
    return needed;
  }
  const bool grad_mode = at::GradMode::is_enabled();
  const auto look_at = [&](const at::Tensor& t) {
    if (t.defined()) {
      needed.reverse = needed.reverse || (grad_mode && t.requires_grad());
      needed.forward_mode = needed.forward_mode || t._fw_grad(/*level=*/0).defined();
    }
  };
  for (size_t i = first; i < first + count; ++i) {
    const c10::IValue& value = stack[i];
    if (value.isTensor()) {
      look_at(value.toTensor());
    } else if (value.isTensorList()) {
      for (const at::Tensor& t : value.toTensorList().vec()) {
        look_at(t);
      }
    }
  }
  return needed;
}

std::string operator_name(const c10::FunctionSchema& schema) {
  const std::string& name = schema.operator_name().name;
  return name.substr(name.find("::") + 2);
}

void autograd_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t count = schema.arguments().size();
  const size_t first = stack->size() - count;
  const Derivatives needed = derivatives_needed(*stack, first, count);
  if (!needed.any()) {
    const at::AutoDispatchBelowAutograd below_autograd;
    op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
    return;
  }
  const std::string name = operator_name(schema);
  if (!needed.transform && !needed.forward_mode) {
    // Reverse mode alone, a forward operator: its C++ node (first_order_autograd.cpp).
    if (const FirstOrderKernel kernel = first_order_kernel(name)) {
      kernel(stack);
      return;
    }
  }
  py::gil_scoped_acquire gil;
  const auto found = python_kernels().find(name);
  TORCH_CHECK(
      found != python_kernels().end(), "pycnn::", name,
      ": no derivatives are registered; import pycnn (pycnn/_autograd.py) to differentiate it");
  const py::object kernel = found->second;
  py::tuple args(count);
  for (size_t i = 0; i < count; ++i) {
    args[i] = torch::jit::toPyObject(std::move((*stack)[first + i]));
  }
  torch::jit::drop(*stack, count);
  const py::object result = kernel(*args);
  const auto& returns = schema.returns();
  if (returns.size() == 1) {
    stack->push_back(torch::jit::toIValue(result, returns[0].type()));
    return;
  }
  const auto results = result.cast<py::tuple>();
  TORCH_CHECK(
      results.size() == returns.size(), "pycnn::", name, ": the Python Autograd kernel returned ", results.size(),
      " values, the schema ", returns.size());
  for (size_t i = 0; i < returns.size(); ++i) {
    stack->push_back(torch::jit::toIValue(results[i], returns[i].type()));
  }
}

// _set_autograd_kernel(name, kernel): kernel(*args) is called for the calls
// of pycnn::name that autograd or torch.func must see.
PyObject* set_autograd_kernel(PyObject* /*module*/, PyObject* args) {
  const char* name = nullptr;
  PyObject* kernel = nullptr;
  if (!PyArg_ParseTuple(args, "sO:_set_autograd_kernel", &name, &kernel)) {
    return nullptr;
  }
  if (!PyCallable_Check(kernel)) {
    PyErr_SetString(PyExc_TypeError, "_set_autograd_kernel: the kernel must be callable");
    return nullptr;
  }
  python_kernels()[name] = py::reinterpret_borrow<py::object>(kernel);
  Py_RETURN_NONE;
}

// The module's methods: _set_autograd_kernel and the eager entries.
PyMethodDef* methods() {
  static std::vector<PyMethodDef> table = [] {
    std::vector<PyMethodDef> all = eager_entries();
    all.push_back(
        {"_set_autograd_kernel", set_autograd_kernel, METH_VARARGS,
         "_set_autograd_kernel(name, kernel): the Python Autograd kernel of pycnn::name"});
    all.push_back({nullptr, nullptr, 0, nullptr});
    return all;
  }();
  return table.data();
}

}  // namespace

TORCH_LIBRARY_IMPL(pycnn, Autograd, m) {
  for (const char* name : {"corr2d", "corr2d_backward_input", "corr2d_backward_weight", "max_pool2d",
                           "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d",
                           "adaptive_avg_pool2d_backward", "batch_norm", "batch_norm_backward"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&autograd_kernel>());
  }
}

}  // namespace pycnn

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "pycnn's compiled operators, registered as torch.ops.pycnn", -1, pycnn::methods()};
  return PyModule_Create(&module_def);
}
