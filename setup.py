"""Builds lightning._C and im2win._C.

Switches (environment variables, all printed at start):
  FORCE_CUDA=1            build the CUDA kernels even if nvcc is not found on this machine
  TORCH_CUDA_ARCH_LIST    GPU architectures (default 9.0, the H200; no GPU is probed)
  MAX_JOBS                parallel compile jobs (ninja)
  DEBUG=1                 -O0 -g
"""

import importlib.machinery
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "csrc"))
import build_config  # noqa: E402

build_config.resolve_cuda_home()  # before torch.utils.cpp_extension reads it
import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

OWN_MARKER = "lightning_im2win_kernels"  # written into lightning/__init__.py


def refuse_foreign_lightning():
    """PyTorch Lightning also installs an import package named `lightning`; installing over
    it would break both. Refuse unless the installed one is ours. An isolated build (plain
    `pip install .`) cannot see the target environment: there the check cannot run."""
    if "install" not in sys.argv and "bdist_wheel" not in sys.argv and "develop" not in sys.argv:
        return
    if any(a.startswith("--target") for a in sys.argv):
        return
    # Look past this checkout (the current directory is on sys.path while setup.py runs).
    paths = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != ROOT]
    spec = importlib.machinery.PathFinder.find_spec("lightning", paths)
    if spec is None or spec.origin is None:
        return
    with open(spec.origin, encoding="utf-8", errors="replace") as f:
        if OWN_MARKER in f.read():
            return
    sys.exit(
        f"refusing to install: a different package named 'lightning' (PyTorch Lightning?) is "
        f"installed at {os.path.dirname(spec.origin)}. Install into a fresh virtual environment, "
        f"or build in place (python setup.py build_ext --inplace) and put this checkout first on "
        f"PYTHONPATH."
    )


def main():
    with_cuda = build_config.cuda_enabled()
    debug = os.environ.get("DEBUG", "0") == "1"
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = build_config.default_arch_list()
    print(
        f"[setup] torch {torch.__version__}; FORCE_CUDA={os.environ.get('FORCE_CUDA', '0')} "
        f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '')} "
        f"MAX_JOBS={os.environ.get('MAX_JOBS', '')} DEBUG={int(debug)} CUDA_HOME={os.environ.get('CUDA_HOME', '')}; "
        + ("building CPU and CUDA kernels" if with_cuda else "nvcc not found: building CPU kernels only")
    )
    refuse_foreign_lightning()
    Extension = CUDAExtension if with_cuda else CppExtension
    args = build_config.compile_args(with_cuda, debug)
    ext_modules = [
        Extension(
            f"{name}._C",
            [os.path.relpath(s, ROOT) for s in build_config.sources(name, with_cuda)],
            extra_compile_args=args if with_cuda else {"cxx": args["cxx"]},
            extra_link_args=build_config.link_args(),
        )
        for name in ("lightning", "im2win")
    ]
    # The binary is only valid with the torch it was compiled against.
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    setup(
        ext_modules=ext_modules,
        install_requires=[torch_pin, "numpy"],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


main()
