// ctest for the lightning CUDA kernels without Python: forward, backward and decode against
// the CPU kernels run in double on the same (rounded) inputs, with NaN-poisoned outputs.
// Exits non-zero on any failure. Needs a GPU (CMake adds it only when one is present).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../../cpu/attn_cpu.h"
#include "../attn_launch.h"

namespace {

using lightning::AttnBwdParams;
using lightning::AttnDecodeParams;
using lightning::AttnParams;
using lightning::DType;

#define CHECK_CUDA(x)                                                                        \
  do {                                                                                       \
    cudaError_t err_ = (x);                                                                  \
    if (err_ != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(err_), __FILE__, __LINE__); \
      std::exit(2);                                                                          \
    }                                                                                        \
  } while (0)

// Host-side rounding to the element type, so the reference sees the kernel's inputs.
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  static constexpr DType kType = DType::kFloat32;
  static float from(float x) { return x; }
  static float to(float x) { return x; }
  static constexpr double kTol = 1e-5;
};
template <>
struct Elem<__half> {
  static constexpr DType kType = DType::kFloat16;
  static __half from(float x) { return __float2half_rn(x); }
  static float to(__half x) { return __half2float(x); }
  static constexpr double kTol = 2e-3;
};
template <>
struct Elem<__nv_bfloat16> {
  static constexpr DType kType = DType::kBFloat16;
  static __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
  static float to(__nv_bfloat16 x) { return __bfloat162float(x); }
  static constexpr double kTol = 4e-3;
};

// A device copy of a host vector, freed at scope exit.
template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    CHECK_CUDA(cudaMalloc(&ptr, (count ? count : 1) * sizeof(T)));
    CHECK_CUDA(cudaMemset(ptr, 0xFF, (count ? count : 1) * sizeof(T)));  // NaN in every float type
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    CHECK_CUDA(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> to_host() const {
    std::vector<T> h(n);
    CHECK_CUDA(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  ~DeviceBuffer() { cudaFree(ptr); }
};

struct Shape {
  int B, H, N, D, E;
  bool decay, init;
};

template <typename T>
std::vector<double> widen(const std::vector<T>& x) {
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = Elem<T>::to(x[i]);
  return out;
}

template <typename T>
std::vector<T> random_elems(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<T> x(n);
  for (auto& v : x) v = Elem<T>::from(normal(rng));
  return x;
}

double rel_err(const std::vector<double>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) num += (got[i] - ref[i]) * (got[i] - ref[i]), den += ref[i] * ref[i];
  return std::isfinite(num) ? std::sqrt(num / (den > 0 ? den : 1)) : INFINITY;
}

int report(const std::string& what, double err, double tol) {
  const bool ok = err <= tol;
  std::printf("%s %-60s %.2e (tol %.0e)\n", ok ? "PASS" : "FAIL", what.c_str(), err, tol);
  return ok ? 0 : 1;
}

// Contiguous (B, H, N, X) strides.
lightning::Strides dense(const Shape& s, int x) {
  return {int64_t(s.H) * s.N * x, int64_t(s.N) * x, x};
}

template <typename T>
int run_case(const Shape& s, std::mt19937& rng) {
  const size_t nq = size_t(s.B) * s.H * s.N * s.D, nv = size_t(s.B) * s.H * s.N * s.E;
  const size_t ns = size_t(s.B) * s.H * s.D * s.E;
  const auto q = random_elems<T>(nq, rng), k = random_elems<T>(nq, rng), v = random_elems<T>(nv, rng);
  const auto go = random_elems<T>(nv, rng);
  const auto s0 = random_elems<float>(ns, rng), g_final = random_elems<float>(ns, rng);
  std::vector<float> slope(s.H);
  for (int h = 0; h < s.H; ++h) slope[h] = 0.9f / (h + 1);
  const std::string name = std::string(s.decay ? "decay" : "no-decay") + (s.init ? " init" : "") + " B" +
                           std::to_string(s.B) + " H" + std::to_string(s.H) + " N" + std::to_string(s.N) + " D" +
                           std::to_string(s.D) + " E" + std::to_string(s.E) + " dtype " +
                           std::to_string(int(Elem<T>::kType));

  // ---- CUDA
  DeviceBuffer<T> dq_in(q), dk_in(k), dv_in(v), dgo(go), d_o(nv), d_dq(nq), d_dk(nq), d_dv(nv);
  DeviceBuffer<float> d_slope(slope), d_s0(s0), d_gfinal(g_final), d_final(ns), d_dinit(ns);
  AttnParams p{};
  p.dtype = Elem<T>::kType;
  p.batch = s.B, p.heads = s.H, p.seqlen = s.N, p.head_dim = s.D, p.value_dim = s.E, p.scale = 0.5;
  p.q = dq_in.ptr, p.k = dk_in.ptr, p.v = dv_in.ptr, p.o = d_o.ptr;
  p.q_stride = p.k_stride = dense(s, s.D);
  p.v_stride = p.o_stride = dense(s, s.E);
  p.slope = s.decay ? d_slope.ptr : nullptr;
  p.num_seqs = s.B;
  p.initial_state = s.init ? d_s0.ptr : nullptr;
  p.final_state = d_final.ptr;
  DeviceBuffer<float> fwd_workspace(size_t(lightning::attn_fwd_cuda_workspace(p)));
  CHECK_CUDA(lightning::attn_fwd_cuda(p, fwd_workspace.ptr, nullptr));
  AttnBwdParams bp{};
  bp.fwd = p;
  bp.grad_out = dgo.ptr, bp.grad_out_stride = p.o_stride;
  bp.grad_final_state = d_gfinal.ptr;
  bp.dq = d_dq.ptr, bp.dk = d_dk.ptr, bp.dv = d_dv.ptr;
  bp.dq_stride = p.q_stride, bp.dk_stride = p.k_stride, bp.dv_stride = p.v_stride;
  bp.grad_initial_state = s.init ? d_dinit.ptr : nullptr;
  DeviceBuffer<float> bwd_workspace(size_t(lightning::attn_bwd_cuda_workspace(bp)));
  CHECK_CUDA(lightning::attn_bwd_cuda(bp, bwd_workspace.ptr, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());

  // ---- CPU reference in double on the same inputs
  std::vector<double> rq = widen(q), rk = widen(k), rv = widen(v), rgo = widen(go);
  std::vector<double> ro(nv), rdq(nq), rdk(nq), rdv(nv);
  std::vector<float> rfinal(ns), rdinit(ns);
  AttnParams c = p;
  c.dtype = DType::kFloat64;
  c.q = rq.data(), c.k = rk.data(), c.v = rv.data(), c.o = ro.data();
  c.slope = s.decay ? slope.data() : nullptr;
  c.initial_state = s.init ? s0.data() : nullptr;
  c.final_state = rfinal.data();
  lightning::attn_fwd_cpu(c, 0, int64_t(s.B) * s.H);
  AttnBwdParams cb = bp;
  cb.fwd = c;
  cb.grad_out = rgo.data(), cb.grad_final_state = g_final.data();
  cb.dq = rdq.data(), cb.dk = rdk.data(), cb.dv = rdv.data();
  cb.grad_initial_state = s.init ? rdinit.data() : nullptr;
  lightning::attn_bwd_cpu(cb, 0, int64_t(s.B) * s.H);

  const double tol = Elem<T>::kTol;
  auto as_double = [](const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); };
  int failures = 0;
  failures += report("o      " + name, rel_err(widen(d_o.to_host()), ro), tol);
  failures += report("final  " + name, rel_err(as_double(d_final.to_host()), as_double(rfinal)), tol);
  failures += report("dq     " + name, rel_err(widen(d_dq.to_host()), rdq), tol);
  failures += report("dk     " + name, rel_err(widen(d_dk.to_host()), rdk), tol);
  failures += report("dv     " + name, rel_err(widen(d_dv.to_host()), rdv), tol);
  if (s.init) failures += report("d_init " + name, rel_err(as_double(d_dinit.to_host()), as_double(rdinit)), tol);
  return failures;
}

// One decode step from a random state: S = lambda S + k v^T, o = scale S^T q.
template <typename T>
int run_decode(int B, int H, int D, int E, std::mt19937& rng) {
  const auto q = random_elems<T>(size_t(B) * H * D, rng), k = random_elems<T>(size_t(B) * H * D, rng);
  const auto v = random_elems<T>(size_t(B) * H * E, rng);
  const auto state = random_elems<float>(size_t(B) * H * D * E, rng);
  std::vector<float> slope(H, 0.25f);
  DeviceBuffer<T> dq(q), dk(k), dv(v), d_o(size_t(B) * H * E);
  DeviceBuffer<float> d_state(state), d_slope(slope);
  AttnDecodeParams p{};
  p.dtype = Elem<T>::kType;
  p.batch = B, p.heads = H, p.head_dim = D, p.value_dim = E, p.scale = 0.5;
  p.q = dq.ptr, p.k = dk.ptr, p.v = dv.ptr, p.o = d_o.ptr;
  p.q_stride_b = p.k_stride_b = int64_t(H) * D, p.q_stride_h = p.k_stride_h = D;
  p.v_stride_b = int64_t(H) * E, p.v_stride_h = E;
  p.slope = d_slope.ptr, p.state = d_state.ptr;
  CHECK_CUDA(lightning::attn_decode_cuda(p, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());

  std::vector<double> rq = widen(q), rk = widen(k), rv = widen(v), ro(size_t(B) * H * E);
  std::vector<float> rstate = state;
  AttnDecodeParams c = p;
  c.dtype = DType::kFloat64;
  c.q = rq.data(), c.k = rk.data(), c.v = rv.data(), c.o = ro.data();
  c.slope = slope.data(), c.state = rstate.data();
  lightning::attn_decode_cpu(c, 0, int64_t(B) * H);
  const std::vector<float> got_state = d_state.to_host();
  const std::string name = "B" + std::to_string(B) + " H" + std::to_string(H) + " D" + std::to_string(D) + " E" +
                           std::to_string(E) + " dtype " + std::to_string(int(Elem<T>::kType));
  int failures = report("decode o     " + name, rel_err(widen(d_o.to_host()), ro), Elem<T>::kTol);
  failures += report("decode state " + name,
                     rel_err(std::vector<double>(got_state.begin(), got_state.end()),
                             std::vector<double>(rstate.begin(), rstate.end())),
                     1e-6);
  return failures;
}

template <typename T>
int run_dtype(std::mt19937& rng) {
  const Shape shapes[] = {
      {2, 3, 1, 64, 64, true, true},     {2, 3, 130, 128, 128, true, true}, {1, 2, 200, 96, 160, true, false},
      {1, 2, 77, 256, 256, false, true}, {2, 1, 65, 16, 48, true, true},    {1, 2, 513, 192, 64, true, true},
      {1, 2, 150, 176, 144, true, false},  // the 192 bucket with masked columns
      {1, 2, 3109, 64, 64, true, true},  // few CTAs, 49 blocks: the sweeps run split in 3 chunks
  };
  int failures = 0;
  for (const Shape& s : shapes) failures += run_case<T>(s, rng);
  failures += run_decode<T>(3, 4, 128, 64, rng);
  failures += run_decode<T>(2, 2, 48, 256, rng);
  return failures;
}

}  // namespace

int main() {
  std::mt19937 rng(2026);
  int failures = run_dtype<__nv_bfloat16>(rng) + run_dtype<__half>(rng) + run_dtype<float>(rng);
  std::printf("%s: %d failed\n", failures ? "FAILED" : "ALL PASS", failures);
  return failures ? 1 : 0;
}
