// Makes the operator library importable as the Python module pycnn._C.
// Importing it loads the shared library, whose static initialisers register
// the operators (csrc/pycnn.cpp) and their kernels; the module itself is empty.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "pycnn's compiled operators, registered as torch.ops.pycnn", -1, nullptr};
  return PyModule_Create(&module_def);
}
