// The eager entries of pycnn._C (eager_entry.cpp): pycnn._C.corr2d,
// max_pool2d, avg_pool2d, adaptive_avg_pool2d and batch_norm, with the
// arguments and results of torch.ops.pycnn.<op>.
#pragma once

#include <Python.h>

#include <vector>

namespace pycnn {

// The module's methods for the five entries (no terminating sentinel).
std::vector<PyMethodDef> eager_entries();

}  // namespace pycnn
