"""Building and installing, as a user would, next to a different package named `lightning`
(PyTorch Lightning installs one): a wheel built without build isolation and installed with
pip's --target, both ops imported from outside the checkout, and setup.py's refusal to
install over the other package.

The wheels are built in this checkout with the configuration of its in-place build, so ninja
finds that build's objects (build/temp.*) up to date and only the link runs (seconds; with the
CUDA kernels, the link and the zip of the larger library)."""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "csrc"))
import build_config  # noqa: E402

FOREIGN = "PyTorch Lightning stand-in"

# Imports both packages and runs both ops on the CPU against plain PyTorch.
IMPORT_CHECK = f"""
import os, sys
import torch, torch.nn.functional as F
import lightning, im2win
from lightning import reference
site = os.path.realpath(sys.argv[1])
for pkg in (lightning, im2win):
    assert os.path.realpath(pkg.__file__).startswith(site), pkg.__file__
q, k, v = (torch.randn(1, 2, 70, 16, dtype=torch.float64) for _ in range(3))
slope = torch.tensor([0.1, 0.5])
o, _ = lightning.attn(q, k, v, slope)
want, _ = reference.attn_naive(q, k, v, slope)
assert torch.allclose(o, want, rtol=1e-10, atol=1e-10), (o - want).abs().max()
x, w = torch.randn(2, 3, 9, 9, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
assert torch.allclose(im2win.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1), rtol=1e-10, atol=1e-10)
print("ok")
"""


def in_place_build():
    """build.ninja of the in-place build, or None."""
    found = glob.glob(os.path.join(ROOT, "build", "temp.*", "build.ninja"))
    return found[0] if found else None


def build_env(foreign_dir):
    """The environment of a build that matches the in-place one (CUDA or not, the same
    architectures, the venv's ninja first on PATH as the Makefile puts it), with a foreign
    `lightning` importable."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = dict(os.environ, PATH=path, PYTHONPATH=foreign_dir, MAX_JOBS=os.environ.get("MAX_JOBS", "1"))
    env.pop("FORCE_CUDA", None)
    with open(in_place_build()) as f:
        ninja = f.read()
    archs = re.findall(r"code=sm_(\d+?)(\d)(a?)\b", ninja)
    if archs:
        env["TORCH_CUDA_ARCH_LIST"] = ";".join(sorted({f"{major}.{minor}{a}" for major, minor, a in archs}))
    else:
        env["CUDA_HOME"] = os.path.join(os.sep, "nonexistent")  # no CUDA kernels in the in-place build
    return env


@pytest.fixture
def foreign_lightning(tmp_path):
    """A directory holding a `lightning` package that is not ours."""
    path = tmp_path / "foreign"
    (path / "lightning").mkdir(parents=True)
    (path / "lightning" / "__init__.py").write_text(f'"""{FOREIGN}"""\n')
    return str(path)


def run(cmd, cwd, env, timeout=1800):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def check_import(site, foreign_dir, cwd):
    """Both ops import from `site` (ahead of the foreign package) and run, outside the checkout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, foreign_dir]))
    out = run([sys.executable, "-c", IMPORT_CHECK, site], cwd=cwd, env=env)
    assert out.stdout.strip() == "ok"


needs_build = pytest.mark.skipif(in_place_build() is None,
                                 reason="needs the in-place build (setup.py build_ext --inplace)")


@needs_build
def test_wheel_installs_next_to_foreign_lightning(tmp_path, foreign_lightning):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    wheels, site = tmp_path / "wheels", str(tmp_path / "site")
    run(pip + ["wheel", "-q", "--no-build-isolation", "--no-deps", "-w", str(wheels), ROOT],
        cwd=tmp_path, env=build_env(foreign_lightning))
    (wheel,) = wheels.glob("*.whl")
    run(pip + ["install", "-q", "--no-deps", "--target", site, str(wheel)], cwd=tmp_path, env=dict(os.environ))
    check_import(site, foreign_lightning, cwd=tmp_path)


@needs_build
def test_pip_install_target_next_to_foreign_lightning(tmp_path, foreign_lightning):
    # pip builds a wheel first (setup.py sees bdist_wheel, never --target), then installs it.
    site = str(tmp_path / "site")
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "-q",
         "--no-build-isolation", "--no-deps", "--target", site, ROOT],
        cwd=tmp_path, env=build_env(foreign_lightning))
    check_import(site, foreign_lightning, cwd=tmp_path)


@pytest.mark.parametrize("command", ["install", "develop"])
def test_setup_refuses_to_install_over_foreign_lightning(tmp_path, foreign_lightning, command):
    # The check runs before anything is built or written.
    env = dict(os.environ, CUDA_HOME=os.path.join(os.sep, "nonexistent"))
    if command == "install":  # the foreign package in the directory installed into
        prefix = tmp_path / "prefix"
        site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        site.mkdir(parents=True)
        os.rename(os.path.join(foreign_lightning, "lightning"), site / "lightning")
        args = ["install", "--prefix", str(prefix)]
    else:  # the foreign package importable in this environment
        env["PYTHONPATH"] = foreign_lightning
        args = ["develop", "--no-deps"]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "setup.py")] + args, cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "refusing to install" in result.stderr and "different package named 'lightning'" in result.stderr


def test_torch_free_builds_add_torchs_nvcc_flags():
    # CMake and the im2win test Makefile compile the kernels with the defines torch's
    # CUDAExtension adds; build_config keeps the copy they read.
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    assert set(build_config.TORCH_NVCC_DEFINES) == {f for f in COMMON_NVCC_FLAGS if f.startswith("-D")}
    flags = build_config.standalone_nvcc_flags("90a")
    assert set(build_config.TORCH_NVCC_DEFINES) <= set(flags) and "-Xptxas=-warn-spills" in flags
