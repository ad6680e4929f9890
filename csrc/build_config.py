"""Sources and compiler flags of the two extensions, in one place.

setup.py builds them ahead of time; from a checkout without a built ``_C``, each package's
``__init__`` calls :func:`jit_load` instead. Kernel ``.cu`` files include no torch headers,
so they compile in seconds; only the binding ``.cpp`` of each namespace sees torch.
"""

import glob
import os
import re
import shutil
import subprocess

ROOT = os.path.dirname(os.path.abspath(__file__))


def _toolkit_root(path):
    """The toolkit root above `path` if it holds the CUDA runtime headers, else None."""
    root = os.path.realpath(path)
    return root if os.path.isfile(os.path.join(root, "include", "cuda_runtime_api.h")) else None


def resolve_cuda_home():
    """Sets CUDA_HOME to the real toolkit root when the user did not.

    torch guesses the root from the nvcc on PATH; where that nvcc is a wrapper script
    (/usr/local/bin/nvcc here) the guess is /usr/local, which has no CUDA headers. nvcc
    itself knows its root: `nvcc --dryrun` prints it as TOP. Call before importing
    torch.utils.cpp_extension, which reads CUDA_HOME once.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = ["/usr/local/cuda"]
    if nvcc:
        candidates.insert(0, os.path.join(os.path.dirname(os.path.realpath(nvcc)), ".."))
        try:
            dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True,
                                 check=False, timeout=60)
            tops = [line.split("=", 1)[1] for line in dry.stderr.splitlines() if line.startswith("#$ TOP=")]
            candidates = tops[:1] + [os.path.join(t, "..") for t in tops[:1]] + candidates
        except (OSError, subprocess.SubprocessError):
            pass
    for c in candidates:
        root = _toolkit_root(c)
        if root:
            os.environ["CUDA_HOME"] = root
            return


def cuda_enabled():
    """CUDA sources are built when nvcc is found or FORCE_CUDA=1; no GPU is ever probed."""
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None and shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")) is not None


def default_arch_list():
    """TORCH_CUDA_ARCH_LIST as given, else 9.0 (Hopper: H100, H200), which torch would
    otherwise guess; 9.0 is built as 9.0a. The convolution's Hopper kernel (wgmma) exists only
    in sm_90a code, and an sm_90a binary runs on the same devices as an sm_90 one (compute
    capability 9.0 exactly); 9.0+PTX stays as it is (then no sm_90a code, no wgmma)."""
    archs = (os.environ.get("TORCH_CUDA_ARCH_LIST") or "9.0").replace(",", ";").replace(" ", ";")
    return ";".join("9.0a" if a == "9.0" else a for a in archs.split(";") if a)


# What torch's CUDAExtension adds to every nvcc command line besides include paths (its
# COMMON_NVCC_FLAGS and the C++ standard its headers need): the torch-free builds (CMake, the
# im2win test Makefile) add the same, so they compile the kernels the extension ships.
TORCH_NVCC_DEFINES = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]
CXX_STANDARD = 20


def kernel_sources(name, kind):
    """The torch-free kernel sources of csrc/<name>: kind "cpu" (cpu/*.cpp) or "cuda" (cuda/*.cu)."""
    pattern = {"cpu": os.path.join("cpu", "*.cpp"), "cuda": os.path.join("cuda", "*.cu")}[kind]
    return sorted(glob.glob(os.path.join(ROOT, name, pattern)))


def sources(name, with_cuda):
    """The bindings (csrc/<name>/*.cpp), the CPU kernels and, with CUDA, the CUDA kernels."""
    files = sorted(glob.glob(os.path.join(ROOT, name, "*.cpp"))) + kernel_sources(name, "cpu")
    if with_cuda:
        files += kernel_sources(name, "cuda")
    return files


def _opt_flags(debug):
    return ["-O0", "-g"] if debug else ["-O3"]


def cxx_flags():
    """The C++ kernels' flags besides optimisation (window_ops.h vectorises with `omp simd`)."""
    return ["-fopenmp"]


def nvcc_flags(arch_list):
    """The CUDA kernels' flags besides optimisation, for a TORCH_CUDA_ARCH_LIST-style
    `arch_list` (as default_arch_list() returns it)."""
    flags = ["--expt-relaxed-constexpr", "-Xptxas=-warn-spills", "--use_fast_math"]
    if "9.0a" in arch_list.split(";"):
        flags.append("-DIM2WIN_HAS_SM90A")  # the host planner may choose the wgmma kernels
    return flags


def compile_args(with_cuda, debug=False):
    """extra_compile_args of the extensions; torch adds the -std its headers need."""
    cxx = _opt_flags(debug) + cxx_flags()
    if not with_cuda:
        return {"cxx": cxx, "nvcc": []}
    nvcc = _opt_flags(debug) + nvcc_flags(default_arch_list()) + ["-DWITH_CUDA"]
    return {"cxx": cxx + ["-DWITH_CUDA"], "nvcc": nvcc}


def link_args():
    """-fopenmp, and the shared libstdc++ when the compiler would link the static one.

    Where the compiler finds no libstdc++.so link (some images ship only the versioned
    libstdc++.so.6: `c++ -print-file-name=libstdc++.so` then answers a bare name), it links
    libstdc++.a into the extension: the module then carries its own copy of the
    iostream/locale code, and formatting a number in an error message (TORCH_CHECK with a
    size) crashes against the process's libstdc++. Naming the runtime library avoids it.
    """
    args = ["-fopenmp"]
    cxx = os.environ.get("CXX", "c++")
    try:
        found = subprocess.run([cxx, "-print-file-name=libstdc++.so"], capture_output=True, text=True,
                               check=False).stdout.strip()
    except OSError:
        return args
    if not os.path.isabs(found):  # not found: the driver would fall back to libstdc++.a
        args.append("-l:libstdc++.so.6")
    return args


def jit_load(name):
    """Builds csrc/<name> with torch.utils.cpp_extension.load and loads it as a plain library
    (the op registrations are what matter, not a Python module)."""
    resolve_cuda_home()
    from torch.utils.cpp_extension import load

    with_cuda = cuda_enabled()
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list()
    args = compile_args(with_cuda, debug=os.environ.get("DEBUG", "0") == "1")
    load(
        name=f"{name}_jit",
        sources=sources(name, with_cuda),
        extra_cflags=args["cxx"],
        extra_cuda_cflags=args["nvcc"],
        extra_ldflags=link_args(),
        is_python_module=False,
        verbose=os.environ.get("VERBOSE", "0") == "1",
    )


def _cmake_archs_to_torch(archs):
    """CMake's CUDA_ARCHITECTURES (90a;80-real) as a TORCH_CUDA_ARCH_LIST (9.0a;8.0); names
    without a number (native, all) are left out."""
    found = (re.fullmatch(r"(\d+)(\d)([a-z]?)(-real|-virtual)?", a) for a in archs.split(";"))
    return ";".join(f"{m[1]}.{m[2]}{m[3]}" for m in found if m)


def standalone_nvcc_flags(cuda_archs):
    """The nvcc flags of the torch-free builds for CMake-style `cuda_archs` (90a;80): the
    extension's, and what torch adds to them."""
    return [f"-std=c++{CXX_STANDARD}"] + TORCH_NVCC_DEFINES + nvcc_flags(_cmake_archs_to_torch(cuda_archs))


def _cmake_script(cuda_archs):
    """CMake `set()` commands for CMakeLists.txt: flags and kernel sources."""
    def setvar(var, values):
        return f'set({var} "{";".join(values)}")'

    lines = [
        setvar("LT_CXX_FLAGS", [f"-std=c++{CXX_STANDARD}"] + cxx_flags()),
        setvar("LT_CUDA_FLAGS", standalone_nvcc_flags(cuda_archs)),
    ]
    for name in ("lightning", "im2win"):
        for kind in ("cpu", "cuda"):
            lines.append(setvar(f"LT_{name.upper()}_{kind.upper()}_SOURCES", kernel_sources(name, kind)))
    return "\n".join(lines)


if __name__ == "__main__":
    # The torch-free builds read their flags and file lists here:
    #   build_config.py --cmake 90a          CMake set() commands (CMakeLists.txt)
    #   build_config.py --nvcc-flags 90a     nvcc flags, space-separated (csrc/im2win/cuda/tests/Makefile)
    #   build_config.py --sources im2win cuda   kernel sources, space-separated
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cmake", metavar="CUDA_ARCHITECTURES")
    mode.add_argument("--nvcc-flags", metavar="CUDA_ARCHITECTURES")
    mode.add_argument("--sources", nargs=2, metavar=("NAME", "KIND"))
    cli = parser.parse_args()
    if cli.cmake is not None:
        print(_cmake_script(cli.cmake))
    elif cli.nvcc_flags is not None:
        print(" ".join(standalone_nvcc_flags(cli.nvcc_flags)))
    else:
        print(" ".join(kernel_sources(*cli.sources)))
