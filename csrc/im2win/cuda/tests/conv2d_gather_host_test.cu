// Host-only test (needs no GPU), two levels:
//  1. "definition": the three GEMM Problems of conv2d_problems.cuh evaluated element by element
//     through their own a_k / a_load / b_col / b_k / b_load / c_col / c_store: every index
//     formula (groups, strides, padding, dilation, NCHW / NHWC, split reductions);
//  2. "ffma tiles": implicit_gemm_kernel's FFMA configuration (M <= 32) emulated on the CPU
//     with the real OperandStage, shared-memory layouts, ThreadFfmaTile and epilogue mapping,
//     thread by thread in the kernel's barrier-separated phases, shared memory poisoned with NaN;
// each compared with the fp64 reference convolution; plus FastDivmod. The tensor-core
// fragments (ldmatrix / mma) need a GPU: conv2d_cuda_test. Run: make -C csrc/im2win/cuda/tests host
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../conv2d_problems.cuh"
#include "conv2d_test_utils.cuh"

namespace im2win_test {
namespace {

using im2win::DType;
using im2win::Fp32Math;
using im2win::to_float;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// C = A B by the definition, through the Problem's element accessors (double accumulation).
struct RunByDefinition {
  static constexpr double kTol = 1e-6;  // one fp32 rounding
  const char* name() const { return "definition"; }

  template <class Problem>
  void operator()(const Problem& problem) const {
    for (int group = 0; group < problem.groups; ++group)
      for (int split = 0; split < problem.splits; ++split) {
        const Problem p = problem.at(group, split);
        const int r_begin = split * p.r_chunk, r_end = std::min(p.R, r_begin + p.r_chunk);
        std::vector<decltype(p.a_k(0))> ak;
        std::vector<decltype(p.b_k(0))> bk;
        for (int r = r_begin; r < r_end; ++r) ak.push_back(p.a_k(r)), bk.push_back(p.b_k(r));
        for (int n = 0; n < p.N; ++n) {
          const auto column = p.b_col(n);
          const auto c_column = p.c_col(n);
          for (int m = 0; m < p.M; ++m) {
            double acc = 0;
            for (size_t i = 0; i < ak.size(); ++i)
              acc += double(to_float(p.a_load(m, ak[i]))) * to_float(p.b_load(bk[i], column));
            p.c_store(m, c_column, float(acc));
          }
        }
      }
  }
};

// implicit_gemm_kernel<Traits> for every block of the grid, its threads run one phase at a
// time in the kernel's order (a phase ends where the kernel has __syncthreads).
template <class Traits>
struct RunFfmaTiles {
  static constexpr double kTol = 1e-5;  // fp32 accumulation
  const char* name() const { return "ffma 32x64"; }

  template <class Problem>
  void operator()(const Problem& problem) const {
    using Stage = im2win::OperandStage<Traits, Problem>;
    using Accumulator = typename Traits::Accumulator;
    constexpr int BK = Traits::BK, THREADS = Traits::THREADS;
    std::vector<float> sA(2 * Traits::A_STAGE), sB(2 * Traits::B_STAGE);
    for (int z = 0; z < problem.groups * problem.splits; ++z)
      for (int by = 0; by < im2win::ceil_div(problem.M, Traits::BM); ++by)
        for (int bx = 0; bx < im2win::ceil_div(problem.N, Traits::BN); ++bx) {
          std::fill(sA.begin(), sA.end(), kNaN);
          std::fill(sB.begin(), sB.end(), kNaN);
          const int group = z / problem.splits, split = z % problem.splits;
          const int m_block = by * Traits::BM, n_block = bx * Traits::BN;
          const int r_begin = split * problem.r_chunk;
          const int r_end = r_begin + std::min(problem.R - r_begin, problem.r_chunk);
          const Problem p = problem.at(group, split);
          std::vector<Stage> stages;
          std::vector<Accumulator> acc(THREADS);
          for (int tid = 0; tid < THREADS; ++tid) {
            stages.emplace_back(p, m_block, n_block, tid);
            acc[tid].zero();
            stages[tid].load(p, r_begin, r_end);
            stages[tid].store(sA.data(), sB.data());
          }
          int read = 0;
          for (int r0 = r_begin; r0 < r_end; r0 += BK) {
            const int write = read ^ 1;
            const bool has_next = r0 + BK < r_end;
            for (int tid = 0; tid < THREADS; ++tid) {
              if (has_next) stages[tid].load(p, r0 + BK, r_end);
              acc[tid].multiply(&sA[read * Traits::A_STAGE], &sB[read * Traits::B_STAGE], tid);
            }
            for (int tid = 0; tid < THREADS; ++tid)
              if (has_next) stages[tid].store(&sA[write * Traits::A_STAGE], &sB[write * Traits::B_STAGE]);
            read = write;
          }
          for (int tid = 0; tid < THREADS; ++tid)
            acc[tid].for_each(tid, [&](int row, int col, float value) {
              const int m = m_block + row, n = n_block + col;
              if (m < p.M && n < p.N) p.c_store(m, p.c_col(n), value);
            });
        }
  }
};

bool test_fast_divmod() {
  std::mt19937 rng(7);
  std::vector<int> divisors;
  for (int d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (int k = 12; k < 31; ++k)
    divisors.insert(divisors.end(), {(1 << k) - 1, 1 << k, (1 << k) + 1});
  divisors.push_back(std::numeric_limits<int>::max());
  std::uniform_int_distribution<int> any(0, std::numeric_limits<int>::max());
  for (int d : divisors) {
    const im2win::FastDivmod fd(d);
    std::vector<int> values = {0, 1, d - 1, d, d + 1, std::numeric_limits<int>::max(),
                               std::numeric_limits<int>::max() - 1};
    for (int i = 0; i < 2000; ++i) values.push_back(i), values.push_back(any(rng));
    for (int n : values) {
      if (n < 0) continue;
      int rem;
      const int q = fd.divmod(n, rem);
      if (q != n / d || rem != n % d) {
        std::printf("FAIL FastDivmod %d / %d gave %d rem %d\n", n, d, q, rem);
        return false;
      }
    }
  }
  std::printf("PASS FastDivmod\n");
  return true;
}

// One case's host tensors (fp32), outputs poisoned with NaN before every run.
struct HostConv {
  const ConvCase& cs;
  const ConvTensors& ref;
  Conv2dParams p;
  NCHWStrides w_stride;
  std::vector<float> input, weight, bias, grad_out, output, grad_in, grad_weight;

  HostConv(const ConvCase& cs_, const ConvTensors& ref_) : cs(cs_), ref(ref_) {
    p = conv_params(cs, DType::kFloat32, Fp32Math::kExact);
    w_stride = dense_strides(cs.c_per_group(), cs.kernel_h, cs.kernel_w, false);  // grad_weight
    input = pack<float>(ref.input, p.in_stride);
    weight = pack<float>(ref.weight, p.w_stride);
    bias = pack<float>(ref.bias, dense_strides(cs.out_channels, 1, 1, false));
    grad_out = pack<float>(ref.grad_out, p.out_stride);
    p.input = input.data(), p.weight = weight.data();
    p.bias = cs.bias ? bias.data() : nullptr;
  }

  Conv2dBwdParams bwd_params() {
    Conv2dBwdParams b{};
    b.fwd = p;
    b.grad_output = grad_out.data();
    b.grad_out_stride = p.out_stride;
    b.grad_input = grad_in.data();
    b.grad_in_stride = p.in_stride;
    return b;
  }

  template <class Run>
  bool forward(const Run& run) {
    output.assign(ref.output.v.size(), kNaN);
    p.output = output.data();
    run(im2win::make_forward_problem<float>(p));
    const Tensor4 out = unpack(output, cs.batch, cs.out_channels, p.out_h, p.out_w, p.out_stride);
    return report(std::string(run.name()) + " forward", relative_error(out, ref.output), run.kTol);
  }

  template <class Run>
  bool grad_input(const Run& run) {
    grad_in.assign(ref.grad_in.v.size(), kNaN);
    run(im2win::make_bwd_data_problem<float>(bwd_params()));
    const Tensor4 out = unpack(grad_in, cs.batch, cs.channels, cs.in_h, cs.in_w, p.in_stride);
    return report(std::string(run.name()) + " grad_input", relative_error(out, ref.grad_in),
                  run.kTol);
  }

  // forced_splits > 0 replaces the launcher's split by that many (uneven) chunks.
  template <class Run>
  bool grad_weight_split(const Run& run, int forced_splits) {
    im2win::WeightGradPlan plan(p);
    if (forced_splits > 0) {
      const int R = cs.batch * p.out_h * p.out_w;
      plan.r_chunk = std::max(1, im2win::ceil_div(R, forced_splits));
      plan.splits = std::max(1, im2win::ceil_div(R, plan.r_chunk));
    }
    std::vector<float> partial(plan.workspace_bytes(p) / sizeof(float), kNaN);
    run(im2win::make_bwd_weight_problem<float>(bwd_params(), plan, partial.data()));
    // What sum_splits_kernel does: add the splits in order.
    grad_weight.assign(ref.grad_weight.v.size(), kNaN);
    const size_t group_size = grad_weight.size() / cs.groups;
    for (size_t e = 0; e < grad_weight.size(); ++e) {
      const size_t g = e / group_size;
      float sum = 0.f;
      for (int s = 0; s < plan.splits; ++s)
        sum += partial[(g * plan.splits + s) * group_size + e - g * group_size];
      grad_weight[e] = sum;
    }
    const Tensor4 out = unpack(grad_weight, cs.out_channels, cs.c_per_group(), cs.kernel_h,
                               cs.kernel_w, w_stride);
    return report(std::string(run.name()) + " grad_weight/" + std::to_string(plan.splits),
                  relative_error(out, ref.grad_weight), run.kTol);
  }

  template <class Run>
  bool all(const Run& run) {
    bool ok = forward(run);
    ok &= grad_input(run);
    ok &= grad_weight_split(run, 0);
    ok &= grad_weight_split(run, 7);
    return ok;
  }
};

bool test_case(const ConvCase& cs, std::mt19937& rng) {
  std::printf("%s\n", cs.describe().c_str());
  const ConvTensors ref = make_reference<float>(cs, rng);
  HostConv conv(cs, ref);
  bool ok = conv.all(RunByDefinition{});
  ok &= conv.all(RunFfmaTiles<im2win::FfmaSmallTraits>{});
  return ok;
}

}  // namespace
}  // namespace im2win_test

int main() {
  using namespace im2win_test;
  const bool divmod_ok = test_fast_divmod();
  std::mt19937 rng(1234);
  int failed = 0;
  for (const ConvCase& cs : conv_cases()) failed += !test_case(cs, rng);
  const bool ok = divmod_ok && failed == 0;
  std::printf("%s: %d case(s) failed\n", ok ? "ALL PASS" : "FAILURES", failed);
  return ok ? 0 : 1;
}
