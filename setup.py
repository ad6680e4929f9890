"""Builds lightning._C and im2win._C.

Switches (environment variables, all printed at start):
  FORCE_CUDA=1            build the CUDA kernels even if nvcc is not found on this machine
  TORCH_CUDA_ARCH_LIST    GPU architectures (default 9.0, Hopper; no GPU is probed)
  MAX_JOBS                parallel compile jobs (ninja)
  DEBUG=1                 -O0 -g
"""

import importlib.machinery
import os
import sys

from setuptools import setup
from setuptools.command.develop import develop
from setuptools.command.install import install

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "csrc"))
import build_config  # noqa: E402

build_config.resolve_cuda_home()  # before torch.utils.cpp_extension reads it
import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

OWN_MARKER = "lightning_im2win_kernels"  # written into lightning/__init__.py


def refuse_foreign_lightning(paths, where):
    """PyTorch Lightning also installs an import package named `lightning`; installing over or
    next to it would break both. Exits if `paths` (this checkout aside) hold a `lightning` that
    is not ours."""
    paths = [p for p in paths if os.path.abspath(p or os.getcwd()) != ROOT]
    spec = importlib.machinery.PathFinder.find_spec("lightning", paths)
    if spec is None or spec.origin is None:
        return
    with open(spec.origin, encoding="utf-8", errors="replace") as f:
        if OWN_MARKER in f.read():
            return
    sys.exit(
        f"refusing to install {where}: a different package named 'lightning' (PyTorch Lightning?) "
        f"is installed at {os.path.dirname(spec.origin)}. Install into a fresh virtual environment "
        f"(or with pip install --target DIR), or build in place (python setup.py build_ext "
        f"--inplace) and put this checkout first on PYTHONPATH."
    )


# The guard runs only where setup.py itself installs into an environment: `setup.py install`
# (not when bdist_wheel stages a wheel under --root) and `setup.py develop`. Building a wheel
# or an sdist never checks: a wheel does not know where it will be installed, and pip
# (`pip install .`, `pip install -e .`) builds a wheel first and installs it itself, so no
# check here can see the environment pip installs into.
class GuardedInstall(install):
    def run(self):
        if not self.root:  # --root: staging a wheel or a system package, not an environment
            in_this_env = os.path.abspath(self.install_lib) in {os.path.abspath(p) for p in sys.path if p}
            refuse_foreign_lightning([self.install_lib] + (sys.path if in_this_env else []),
                                     f"into {self.install_lib}")
        super().run()


class GuardedDevelop(develop):  # runs `pip install -e .`
    def run(self):
        if self.install_dir:
            refuse_foreign_lightning([self.install_dir], f"into {self.install_dir}")
        elif not self.prefix:  # into this interpreter's environment
            refuse_foreign_lightning(sys.path, "in development mode")
        super().run()


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    def finalize_options(self):
        super().finalize_options()
        if self.editable_mode:
            # An editable install (`pip install -e .`) builds in a fresh temporary directory;
            # the in-place build's directory lets ninja reuse its objects instead of compiling
            # everything again.
            plat = self.distribution.get_command_obj("build").plat_name
            self.build_temp = os.path.join(ROOT, "build", f"temp.{plat}-{sys.implementation.cache_tag}")


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
        cmdclass={"build_ext": BuildExt, "install": GuardedInstall, "develop": GuardedDevelop},
    )


main()
