"""Sources and compiler flags of the two extensions, in one place.

setup.py builds them ahead of time; from a checkout without a built ``_C``, each package's
``__init__`` calls :func:`jit_load` instead. Kernel ``.cu`` files include no torch headers,
so they compile in seconds; only the binding ``.cpp`` of each namespace sees torch.
"""

import glob
import os
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
    """TORCH_CUDA_ARCH_LIST as given, else 9.0 (the H200), which torch would otherwise guess;
    9.0 is built as 9.0a. The fp32 convolution's Hopper kernel (wgmma) exists only in sm_90a
    code, and an sm_90a binary runs on the same devices as an sm_90 one (compute capability
    9.0 exactly); 9.0+PTX stays as it is (the kernels ask the device what they got)."""
    archs = (os.environ.get("TORCH_CUDA_ARCH_LIST") or "9.0").replace(",", ";").replace(" ", ";")
    return ";".join("9.0a" if a == "9.0" else a for a in archs.split(";") if a)


def sources(name, with_cuda):
    """Every .cpp of csrc/<name> (bindings, CPU kernels) and, with CUDA, every .cu."""
    base = os.path.join(ROOT, name)
    files = sorted(glob.glob(os.path.join(base, "*.cpp")) + glob.glob(os.path.join(base, "cpu", "*.cpp")))
    if with_cuda:
        files += sorted(glob.glob(os.path.join(base, "cuda", "*.cu")))
    return files


def compile_args(with_cuda, debug=False):
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-fopenmp"]  # torch adds the -std its headers need (C++20 from 2.13 on)
    nvcc = opt + [
        "--expt-relaxed-constexpr",
        "-Xptxas=-warn-spills",
        "--use_fast_math",
    ]
    if with_cuda:
        cxx.append("-DWITH_CUDA")
        nvcc.append("-DWITH_CUDA")
        if "9.0a" in default_arch_list().split(";"):
            nvcc.append("-DIM2WIN_HAS_SM90A")  # the host planner may choose the wgmma kernels
    return {"cxx": cxx, "nvcc": nvcc}


def link_args():
    """-fopenmp, and the shared libstdc++ when the compiler would link the static one.

    Where the compiler finds no libstdc++.so link (seen on the H200 image: `c++
    -print-file-name=libstdc++.so` answers a bare name), it links libstdc++.a into the
    extension: the module then carries its own copy of the iostream/locale code, and
    formatting a number in an error message (TORCH_CHECK with a size) segfaulted against the
    process's libstdc++. Naming the runtime library fixed it there.
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
