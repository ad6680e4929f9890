"""Error measures and poisoning shared by the tests (DESIGN.md section 4)."""

import torch

# Relative RMS error bars against the fp64 reference, by dtype of the inputs.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.bfloat16: 4e-3,
    torch.float16: 2e-3,
}
TF32_TOLERANCE = 1e-3


def rel_err(out, ref):
    """||out - ref|| / ||ref|| in fp64; NaN or inf anywhere gives inf, so it never passes."""
    out = out.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    if not torch.isfinite(out).all():
        return float("inf")
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_close(out, ref, dtype, name="output", tol=None):
    tol = TOLERANCE[dtype] if tol is None else tol
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e} ({dtype})"


def poison_(t):
    """Fill with NaN so an element a kernel forgets to write fails the comparison."""
    return t.fill_(float("nan"))
