// The registration skeleton of both extensions. Each binding file defines its schemas with
// TORCH_LIBRARY and one function that binds its kernels to them; the same functions serve
// CPU and CUDA tensors (they branch on the device).
#pragma once

#include <Python.h>
#include <torch/library.h>

// Registers bind(torch::Library&) for CPU tensors and, built WITH_CUDA, for CUDA tensors.
#ifdef WITH_CUDA
#define LT_REGISTER_CPU_AND_CUDA(ns, bind)           \
  TORCH_LIBRARY_IMPL(ns, CPU, m) { bind(m); }        \
  TORCH_LIBRARY_IMPL(ns, CUDA, m) { bind(m); }
#else
#define LT_REGISTER_CPU_AND_CUDA(ns, bind) TORCH_LIBRARY_IMPL(ns, CPU, m) { bind(m); }
#endif

// Each extension's `_C` module exists only so that `import <package>._C` loads the library
// and runs its TORCH_LIBRARY registrations; it defines no Python functions.
#define LT_DEFINE_REGISTRATION_MODULE()                                                   \
  extern "C" PyObject* PyInit__C() {                                                      \
    static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};      \
    return PyModule_Create(&module);                                                      \
  }
