// Each extension's `_C` module exists only so that `import <package>._C` loads the library
// and runs its TORCH_LIBRARY registrations; it defines no Python functions.
#pragma once

#include <Python.h>

#define LT_DEFINE_REGISTRATION_MODULE()                                                   \
  extern "C" PyObject* PyInit__C() {                                                      \
    static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};      \
    return PyModule_Create(&module);                                                      \
  }
