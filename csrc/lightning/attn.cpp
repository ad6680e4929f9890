// The one schema site of namespace `lightning`, and its bindings: check the tensors, make
// the outputs, fill a torch-free Params struct and hand it to the CPU or CUDA kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "../common/passed_checks.h"
#include "../common/registration.h"
#include "../common/torch_utils.h"
#include "attn_params.h"
#include "cpu/attn_cpu.h"

#ifdef WITH_CUDA
#include "../common/cuda_utils.h"
#include "cuda/attn_launch.h"
#endif

namespace lightning {
namespace {

using at::Tensor;
using std::optional;
using namespace torch_utils;

Strides strides_of(const Tensor& t) {  // t is (B, H, N, X)
  return {stride_or_zero(t, 0), stride_or_zero(t, 1), stride_or_zero(t, 2)};
}

// Pointers and strides of the tensors a kernel reads or writes; the dtype follows q (the CPU
// path passes its widened copies here).
void set_qkv(AttnParams& p, const Tensor& q, const Tensor& k, const Tensor& v) {
  p.dtype = to_dtype(q.scalar_type());
  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr();
  p.q_stride = strides_of(q), p.k_stride = strides_of(k), p.v_stride = strides_of(v);
}

void set_grads(AttnBwdParams& p, const Tensor& grad_out, const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  p.grad_out = grad_out.data_ptr(), p.grad_out_stride = strides_of(grad_out);
  p.dq = dq.data_ptr(), p.dk = dk.data_ptr(), p.dv = dv.data_ptr();
  p.dq_stride = strides_of(dq), p.dk_stride = strides_of(dk), p.dv_stride = strides_of(dv);
}

void set_decode_tensors(AttnDecodeParams& p, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o) {
  p.dtype = to_dtype(q.scalar_type());
  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr(), p.o = o.data_ptr();
  p.q_stride_b = stride_or_zero(q, 0), p.q_stride_h = stride_or_zero(q, 1);
  p.k_stride_b = stride_or_zero(k, 0), p.k_stride_h = stride_or_zero(k, 1);
  p.v_stride_b = stride_or_zero(v, 0), p.v_stride_h = stride_or_zero(v, 1);
}

// Host-side values are needed to validate a CUDA tensor; reading them synchronises, which
// a CUDA graph being captured cannot do, so graphs skip the value checks (shapes are still
// checked).
bool can_read_values(const Tensor& t) {
#ifdef WITH_CUDA
  if (t.is_cuda()) return !stream_is_capturing();
#endif
  return true;
}

// q, k, v of one call: their rank, one device, one dtype, and a dtype the kernels have.
void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v, int64_t rank, const char* op) {
  check_rank(q, rank, op, "q");
  check_rank(k, rank, op, "k");
  check_rank(v, rank, op, "v");
  check_same_device(q, k, op, "q", "k");
  check_same_device(q, v, op, "q", "v");
  check_same_dtype(q, k, op, "q", "k");
  check_same_dtype(q, v, op, "q", "v");
  TORCH_CHECK(q.is_cpu() || q.is_cuda(), op, ": q must be a CPU or CUDA tensor, got ", q.device());
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || (dt == at::kDouble && q.is_cpu()), op,
              ": q must be float32, float16 or bfloat16 (float64 on CPU), got ", dt);
}

void check_head_dim(int64_t dim, const char* op, const char* name) {
  TORCH_CHECK_VALUE(dim >= 16 && dim <= common::kMaxHeadDim && dim % 16 == 0, op, ": ", name,
                    " must be a multiple of 16 in [16, ", common::kMaxHeadDim, "], got ", dim);
}

void check_slope(const optional<Tensor>& slope, const Tensor& q, int64_t heads, const char* op) {
  if (!slope) return;
  check_same_device(q, *slope, op, "q", "slope");
  TORCH_CHECK_VALUE(slope->dim() == 1 && slope->size(0) == heads, op,
                    ": slope must have shape (H,) = (", heads, ",), got ", slope->sizes());
  check_dtype(*slope, at::kFloat, op, "slope");
  static PassedValueChecks valid_slopes;  // the check synchronises with the GPU
  if (can_read_values(*slope) && !valid_slopes.contains(*slope)) {
    TORCH_CHECK_VALUE(slope->ge(0).all().item<bool>(), op,
                      ": slope must be >= 0 (and not NaN) for every head");
    valid_slopes.add(*slope);
  }
}

void check_state(const Tensor& state, const Tensor& q, int64_t seqs, int64_t heads,
                 int64_t d, int64_t e, const char* op, const char* name) {
  check_same_device(q, state, op, "q", name);
  check_dtype(state, at::kFloat, op, name);
  TORCH_CHECK_VALUE(state.dim() == 4 && state.size(0) == seqs && state.size(1) == heads &&
                        state.size(2) == d && state.size(3) == e,
                    op, ": ", name, " must have shape (", seqs, ", ", heads, ", ", d, ", ", e,
                    ") (one fp32 state per sequence and head), got ", state.sizes());
}

// Validates cu_seqlens and returns it as contiguous int64 on q's device.
Tensor checked_cu_seqlens(const Tensor& cu, const Tensor& q, const char* op) {
  check_same_device(q, cu, op, "q", "cu_seqlens");
  TORCH_CHECK_VALUE(cu.dim() == 1 && cu.size(0) >= 2, op,
                    ": cu_seqlens must be 1-D with at least 2 entries, got shape ", cu.sizes());
  TORCH_CHECK_VALUE(cu.scalar_type() == at::kInt || cu.scalar_type() == at::kLong, op,
                    ": cu_seqlens must be int32 or int64, got ", cu.scalar_type());
  TORCH_CHECK_VALUE(q.size(0) == 1, op, ": cu_seqlens needs batch size 1 (sequences packed ",
                    "along N), got B = ", q.size(0));
  Tensor offsets = cu.to(at::kLong).contiguous();
  if (can_read_values(offsets)) {
    Tensor host = offsets.cpu();
    const int64_t* c = host.data_ptr<int64_t>();
    const int64_t n = host.size(0);
    TORCH_CHECK_VALUE(c[0] == 0 && c[n - 1] == q.size(2), op,
                      ": cu_seqlens must start at 0 and end at N = ", q.size(2), ", got ", c[0],
                      " and ", c[n - 1]);
    for (int64_t i = 1; i < n; ++i)
      TORCH_CHECK_VALUE(c[i] >= c[i - 1], op, ": cu_seqlens must be non-decreasing, but entry ",
                        i, " (", c[i], ") < entry ", i - 1, " (", c[i - 1], ")");
  }
  return offsets;
}

// Everything attn and attn_backward share: validated inputs and the forward Params.
struct AttnInputs {
  Tensor q, k, v, slope, initial_state, cu_seqlens;
  int64_t num_seqs;
  AttnParams params;
};

AttnInputs check_attn_inputs(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                             const optional<Tensor>& slope, const optional<Tensor>& initial_state,
                             const optional<Tensor>& cu_seqlens, double scale, const char* op) {
  check_qkv(q_in, k_in, v_in, 4, op);
  TORCH_CHECK_VALUE(k_in.sizes() == q_in.sizes(), op, ": k must have the shape of q ",
                    q_in.sizes(), ", got ", k_in.sizes());
  TORCH_CHECK_VALUE(v_in.size(0) == q_in.size(0) && v_in.size(1) == q_in.size(1) &&
                        v_in.size(2) == q_in.size(2),
                    op, ": v must be (B, H, N, E) with (B, H, N) of q = ",
                    q_in.sizes().slice(0, 3), ", got ", v_in.sizes());
  const int64_t heads = q_in.size(1), d = q_in.size(3), e = v_in.size(3);
  check_head_dim(d, op, "the head dim D of q and k");
  check_head_dim(e, op, "the head dim E of v");
  check_slope(slope, q_in, heads, op);

  AttnInputs in;
  in.q = with_aligned_rows(q_in);
  in.k = with_aligned_rows(k_in);
  in.v = with_aligned_rows(v_in);
  in.num_seqs = q_in.size(0);
  if (cu_seqlens) {
    in.cu_seqlens = checked_cu_seqlens(*cu_seqlens, q_in, op);
    in.num_seqs = in.cu_seqlens.size(0) - 1;
  }
  // The CUDA grid is (slices, heads, sequences): its y and z extents stop at kMaxGridYZ.
  constexpr int kMaxGrid = common::kMaxGridYZ;
  TORCH_CHECK(!q_in.is_cuda() || (in.num_seqs <= kMaxGrid && heads <= kMaxGrid), op, ": at most ", kMaxGrid,
              " sequences and ", kMaxGrid, " heads per call on CUDA, got ", in.num_seqs, " and ", heads);
  if (slope) in.slope = slope->contiguous();
  if (initial_state) {
    check_state(*initial_state, q_in, in.num_seqs, heads, d, e, op, "initial_state");
    in.initial_state = initial_state->contiguous();
  }

  AttnParams& p = in.params;
  set_qkv(p, in.q, in.k, in.v);
  p.batch = q_in.size(0);
  p.heads = heads;
  p.seqlen = q_in.size(2);
  p.head_dim = d;
  p.value_dim = e;
  p.scale = scale;
  p.slope = slope ? in.slope.data_ptr<float>() : nullptr;
  p.cu_seqlens = cu_seqlens ? in.cu_seqlens.data_ptr<int64_t>() : nullptr;
  p.num_seqs = in.num_seqs;
  p.initial_state = initial_state ? in.initial_state.data_ptr<float>() : nullptr;
  p.o = nullptr;
  p.o_stride = {0, 0, 0};
  p.final_state = nullptr;
  return in;
}

#ifdef WITH_CUDA
// Scratch of the CUDA kernels (attn_*_cuda_workspace floats); an empty tensor has no storage.
float* float_ptr_or_null(Tensor& t) { return t.numel() > 0 ? t.data_ptr<float>() : nullptr; }
#endif

int64_t tokens_per_item(const AttnInputs& in) {
  return in.cu_seqlens.defined() ? in.params.seqlen / std::max<int64_t>(1, in.num_seqs) : in.params.seqlen;
}

std::tuple<Tensor, Tensor> attn(const Tensor& q, const Tensor& k, const Tensor& v,
                                const optional<Tensor>& slope,
                                const optional<Tensor>& initial_state,
                                const optional<Tensor>& cu_seqlens, bool output_final_state,
                                double scale) {
  const char* op = "lightning.attn";
  AttnInputs in = check_attn_inputs(q, k, v, slope, initial_state, cu_seqlens, scale, op);
  const int64_t heads = q.size(1), d = q.size(3), e = v.size(3);
  Tensor o = at::empty_like(in.v);  // like the aligned view: its last dim is contiguous
  Tensor final_state = output_final_state
                           ? at::empty({in.num_seqs, heads, d, e}, q.options().dtype(at::kFloat))
                           : at::empty({0}, q.options().dtype(at::kFloat));
  AttnParams p = in.params;
  p.final_state = output_final_state ? final_state.data_ptr<float>() : nullptr;
  if (o.numel() == 0) {  // no tokens (or no sequence or head): the state passes through
    if (output_final_state) initial_state ? final_state.copy_(in.initial_state) : final_state.zero_();
    return {o, final_state};
  }

#ifdef WITH_CUDA
  if (q.is_cuda()) {
    c10::cuda::CUDAGuard guard(q.device());
    p.o = o.data_ptr();
    p.o_stride = strides_of(o);
    Tensor workspace = at::empty({attn_fwd_cuda_workspace(p)}, q.options().dtype(at::kFloat));
    check_launch(attn_fwd_cuda(p, float_ptr_or_null(workspace), current_stream()), op);
    return {o, final_state};
  }
#endif
  Tensor qc = cpu_compute_view(in.q), kc = cpu_compute_view(in.k), vc = cpu_compute_view(in.v);
  Tensor oc = o.scalar_type() == qc.scalar_type() ? o : at::empty_like(vc);
  set_qkv(p, qc, kc, vc);
  p.o = oc.data_ptr();
  p.o_stride = strides_of(oc);
  run_cpu(in.num_seqs * heads, tokens_per_item(in) * (common::kLightningBlock + d) * (d + e),
          [&](int64_t b, int64_t e_) { attn_fwd_cpu(p, b, e_); });
  if (!oc.is_same(o)) o.copy_(oc);
  return {o, final_state};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> attn_backward(
    const Tensor& grad_out, const optional<Tensor>& grad_final_state, const Tensor& q,
    const Tensor& k, const Tensor& v, const optional<Tensor>& slope,
    const optional<Tensor>& initial_state, const optional<Tensor>& cu_seqlens, double scale) {
  const char* op = "lightning.attn_backward";
  AttnInputs in = check_attn_inputs(q, k, v, slope, initial_state, cu_seqlens, scale, op);
  const int64_t heads = q.size(1), d = q.size(3), e = v.size(3);
  check_same_device(q, grad_out, op, "q", "grad_out");
  check_same_dtype(q, grad_out, op, "q", "grad_out");
  TORCH_CHECK_VALUE(grad_out.sizes() == v.sizes(), op, ": grad_out must have the shape of v ",
                    v.sizes(), ", got ", grad_out.sizes());
  Tensor g_final;
  if (grad_final_state) {
    check_state(*grad_final_state, q, in.num_seqs, heads, d, e, op, "grad_final_state");
    g_final = grad_final_state->contiguous();
  }
  Tensor gout = with_aligned_rows(grad_out);
  Tensor dq = at::empty_like(in.q), dk = at::empty_like(in.k), dv = at::empty_like(in.v);
  Tensor d_init = initial_state ? at::empty_like(in.initial_state)
                                : at::empty({0}, q.options().dtype(at::kFloat));

  if (gout.numel() == 0) {  // no tokens: the final state is the initial one
    if (initial_state) grad_final_state ? d_init.copy_(g_final) : d_init.zero_();
    return {dq, dk, dv, d_init};
  }

  AttnBwdParams p;
  p.fwd = in.params;
  p.grad_final_state = grad_final_state ? g_final.data_ptr<float>() : nullptr;
  p.grad_initial_state = initial_state ? d_init.data_ptr<float>() : nullptr;

#ifdef WITH_CUDA
  if (q.is_cuda()) {
    c10::cuda::CUDAGuard guard(q.device());
    set_grads(p, gout, dq, dk, dv);
    Tensor workspace = at::empty({attn_bwd_cuda_workspace(p)}, q.options().dtype(at::kFloat));
    check_launch(attn_bwd_cuda(p, float_ptr_or_null(workspace), current_stream()), op);
    return {dq, dk, dv, d_init};
  }
#endif
  Tensor qc = cpu_compute_view(in.q), kc = cpu_compute_view(in.k), vc = cpu_compute_view(in.v);
  Tensor gc = cpu_compute_view(gout);
  const bool widened = qc.scalar_type() != q.scalar_type();
  Tensor dqc = widened ? at::empty_like(qc) : dq;
  Tensor dkc = widened ? at::empty_like(kc) : dk;
  Tensor dvc = widened ? at::empty_like(vc) : dv;
  set_qkv(p.fwd, qc, kc, vc);
  set_grads(p, gc, dqc, dkc, dvc);
  run_cpu(in.num_seqs * heads, 3 * tokens_per_item(in) * (common::kLightningBlock + d) * (d + e),
          [&](int64_t b, int64_t e_) { attn_bwd_cpu(p, b, e_); });
  if (widened) {
    dq.copy_(dqc);
    dk.copy_(dkc);
    dv.copy_(dvc);
  }
  return {dq, dk, dv, d_init};
}

Tensor attn_decode(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& state,
                   const optional<Tensor>& slope, double scale) {
  const char* op = "lightning.attn_decode";
  check_qkv(q, k, v, 3, op);
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), op, ": k must have the shape of q ", q.sizes(),
                    ", got ", k.sizes());
  TORCH_CHECK_VALUE(v.size(0) == q.size(0) && v.size(1) == q.size(1), op,
                    ": v must be (B, H, E) with (B, H) of q, got ", v.sizes());
  const int64_t batch = q.size(0), heads = q.size(1), d = q.size(2), e = v.size(2);
  check_head_dim(d, op, "the head dim D of q and k");
  check_head_dim(e, op, "the head dim E of v");
  check_slope(slope, q, heads, op);
  check_state(state, q, batch, heads, d, e, op, "state");
  TORCH_CHECK_VALUE(state.is_contiguous(), op, ": state must be contiguous (it is updated in place)");
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(state.data_ptr()) % 16 == 0, op,
                    ": state must start on a 16-byte boundary (a fresh tensor does; a view at an odd "
                    "offset does not)");

  Tensor qa = with_aligned_rows(q), ka = with_aligned_rows(k), va = with_aligned_rows(v);
  Tensor slope_c = slope ? slope->contiguous() : Tensor();
  Tensor o = at::empty({batch, heads, e}, v.options());
  if (o.numel() == 0) return o;

  AttnDecodeParams p;
  p.batch = batch;
  p.heads = heads;
  p.head_dim = d;
  p.value_dim = e;
  p.scale = scale;
  p.slope = slope ? slope_c.data_ptr<float>() : nullptr;
  p.state = state.data_ptr<float>();
#ifdef WITH_CUDA
  if (q.is_cuda()) {
    c10::cuda::CUDAGuard guard(q.device());
    set_decode_tensors(p, qa, ka, va, o);
    check_launch(attn_decode_cuda(p, current_stream()), op);
    return o;
  }
#endif
  Tensor qc = cpu_compute_view(qa), kc = cpu_compute_view(ka), vc = cpu_compute_view(va);
  Tensor oc = o.scalar_type() == qc.scalar_type() ? o : at::empty(o.sizes(), qc.options());
  set_decode_tensors(p, qc, kc, vc, oc);
  run_cpu(batch * heads, d * e, [&](int64_t b, int64_t e_) { attn_decode_cpu(p, b, e_); });
  if (!oc.is_same(o)) o.copy_(oc);
  return o;
}

void bind_kernels(torch::Library& m) {
  m.impl("attn", &attn);
  m.impl("attn_backward", &attn_backward);
  m.impl("attn_decode", &attn_decode);
}

}  // namespace

TORCH_LIBRARY(lightning, m) {
  m.def(
      "attn(Tensor q, Tensor k, Tensor v, Tensor? slope, Tensor? initial_state, "
      "Tensor? cu_seqlens, bool output_final_state, float scale) -> (Tensor, Tensor)");
  m.def(
      "attn_backward(Tensor grad_out, Tensor? grad_final_state, Tensor q, Tensor k, Tensor v, "
      "Tensor? slope, Tensor? initial_state, Tensor? cu_seqlens, float scale) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "attn_decode(Tensor q, Tensor k, Tensor v, Tensor(a!) state, Tensor? slope, float scale) "
      "-> Tensor");
}

LT_REGISTER_CPU_AND_CUDA(lightning, bind_kernels)

}  // namespace lightning

LT_DEFINE_REGISTRATION_MODULE()
