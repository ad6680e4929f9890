// ctest for the torch-free CPU kernels of lightning::attn: the blockwise kernel against the
// naive O(n^2) formula in double, and its backward against central differences of
// L = <o, G> + <final_state, G_final>. Exits non-zero on any failure.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../attn_cpu.h"

namespace {

using lightning::AttnBwdParams;
using lightning::AttnParams;
using lightning::DType;

struct Problem {
  int B, H, N, D, E;
  bool decay, init;
  std::vector<double> q, k, v, go;
  std::vector<float> slope, s0, g_final;
};

Problem make_problem(int B, int H, int N, int D, int E, bool decay, bool init, std::mt19937& rng) {
  std::normal_distribution<double> normal;
  Problem pr{B, H, N, D, E, decay, init};
  auto fill = [&](std::vector<double>& x, size_t n) { x.resize(n); for (auto& y : x) y = normal(rng); };
  fill(pr.q, size_t(B) * H * N * D);
  fill(pr.k, size_t(B) * H * N * D);
  fill(pr.v, size_t(B) * H * N * E);
  fill(pr.go, size_t(B) * H * N * E);
  for (int h = 0; h < H; ++h) pr.slope.push_back(0.9f / (h + 1));
  for (size_t i = 0; i < size_t(B) * H * D * E; ++i) {
    pr.s0.push_back(static_cast<float>(normal(rng)));
    pr.g_final.push_back(static_cast<float>(normal(rng)));
  }
  return pr;
}

AttnParams params(const Problem& pr, const double* q, const double* k, double* o, float* final_state) {
  AttnParams p{};
  p.dtype = DType::kFloat64;
  p.batch = pr.B, p.heads = pr.H, p.seqlen = pr.N, p.head_dim = pr.D, p.value_dim = pr.E;
  p.scale = 0.5;
  p.q = q, p.k = k, p.v = pr.v.data(), p.o = o;
  p.q_stride = p.k_stride = {int64_t(pr.H) * pr.N * pr.D, int64_t(pr.N) * pr.D, pr.D};
  p.v_stride = p.o_stride = {int64_t(pr.H) * pr.N * pr.E, int64_t(pr.N) * pr.E, pr.E};
  p.slope = pr.decay ? pr.slope.data() : nullptr;
  p.num_seqs = pr.B;
  p.initial_state = pr.init ? pr.s0.data() : nullptr;
  p.final_state = final_state;
  return p;
}

// o_i = scale (sum_{j<=i} lambda^(i-j) (q_i . k_j) v_j + lambda^(i+1) S0^T q_i)
std::vector<double> naive_forward(const Problem& pr) {
  std::vector<double> o(pr.go.size(), 0.0);
  for (int b = 0; b < pr.B; ++b)
    for (int h = 0; h < pr.H; ++h) {
      const double s = pr.decay ? pr.slope[h] : 0.0;
      const size_t qo = (size_t(b) * pr.H + h) * pr.N * pr.D, vo = (size_t(b) * pr.H + h) * pr.N * pr.E;
      const size_t so = (size_t(b) * pr.H + h) * pr.D * pr.E;
      for (int i = 0; i < pr.N; ++i)
        for (int x = 0; x < pr.E; ++x) {
          double acc = 0;
          for (int j = 0; j <= i; ++j) {
            double dot = 0;
            for (int d = 0; d < pr.D; ++d) dot += pr.q[qo + i * pr.D + d] * pr.k[qo + j * pr.D + d];
            acc += std::exp(-s * (i - j)) * dot * pr.v[vo + j * pr.E + x];
          }
          if (pr.init)
            for (int d = 0; d < pr.D; ++d)
              acc += std::exp(-s * (i + 1)) * pr.s0[so + d * pr.E + x] * pr.q[qo + i * pr.D + d];
          o[vo + i * pr.E + x] = 0.5 * acc;
        }
    }
  return o;
}

double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
  return std::isfinite(num) ? std::sqrt(num / (den > 0 ? den : 1)) : INFINITY;
}

// L = <o, G> + <final_state, G_final> for the given q, k.
double loss(const Problem& pr, const std::vector<double>& q, const std::vector<double>& k) {
  std::vector<double> o(pr.go.size());
  std::vector<float> fin(pr.s0.size());
  const AttnParams p = params(pr, q.data(), k.data(), o.data(), fin.data());
  lightning::attn_fwd_cpu(p, 0, int64_t(pr.B) * pr.H);
  double l = 0;
  for (size_t i = 0; i < o.size(); ++i) l += o[i] * pr.go[i];
  for (size_t i = 0; i < fin.size(); ++i) l += double(fin[i]) * pr.g_final[i];
  return l;
}

int check(const char* name, double err, double tol) {
  const bool ok = err <= tol;
  std::printf("%s %-48s rel err %.2e (tol %.0e)\n", ok ? "PASS" : "FAIL", name, err, tol);
  return ok ? 0 : 1;
}

int run_case(int B, int H, int N, int D, int E, bool decay, bool init, std::mt19937& rng) {
  char name[96];
  std::snprintf(name, sizeof(name), "B%d H%d N%d D%d E%d decay=%d init=%d", B, H, N, D, E, decay, init);
  const Problem pr = make_problem(B, H, N, D, E, decay, init, rng);
  int failures = 0;

  std::vector<double> o(pr.go.size(), NAN);
  std::vector<float> fin(pr.s0.size(), NAN);
  lightning::attn_fwd_cpu(params(pr, pr.q.data(), pr.k.data(), o.data(), fin.data()), 0, int64_t(B) * H);
  failures += check((std::string("forward ") + name).c_str(), rel_err(o, naive_forward(pr)), 1e-12);

  // Backward: directional derivative of L along a random direction of q (then k), against
  // central differences.
  std::vector<double> dq(pr.q.size(), NAN), dk(pr.k.size(), NAN), dv(pr.v.size(), NAN);
  std::vector<float> d_init(pr.s0.size(), NAN);
  AttnBwdParams bp{};
  bp.fwd = params(pr, pr.q.data(), pr.k.data(), nullptr, nullptr);
  bp.grad_out = pr.go.data();
  bp.grad_out_stride = bp.fwd.o_stride;
  bp.grad_final_state = pr.g_final.data();
  bp.dq = dq.data(), bp.dk = dk.data(), bp.dv = dv.data();
  bp.dq_stride = bp.fwd.q_stride, bp.dk_stride = bp.fwd.k_stride, bp.dv_stride = bp.fwd.v_stride;
  bp.grad_initial_state = init ? d_init.data() : nullptr;
  lightning::attn_bwd_cpu(bp, 0, int64_t(B) * H);
  std::normal_distribution<double> normal;
  for (int which = 0; which < 2; ++which) {
    std::vector<double> dir(pr.q.size());
    for (auto& x : dir) x = normal(rng);
    const double eps = 0.5;  // L is quadratic: any step is exact, a large one drowns the fp32 state rounding
    std::vector<double> plus = which ? pr.k : pr.q, minus = plus;
    for (size_t i = 0; i < dir.size(); ++i) plus[i] += eps * dir[i], minus[i] -= eps * dir[i];
    const double numeric = which ? (loss(pr, pr.q, plus) - loss(pr, pr.q, minus)) / (2 * eps)
                                 : (loss(pr, plus, pr.k) - loss(pr, minus, pr.k)) / (2 * eps);
    double analytic = 0;
    const std::vector<double>& grad = which ? dk : dq;
    for (size_t i = 0; i < dir.size(); ++i) analytic += grad[i] * dir[i];
    failures += check((std::string(which ? "dk " : "dq ") + name).c_str(),
                      std::abs(numeric - analytic) / std::max(1.0, std::abs(numeric)), 1e-6);
  }
  return failures;
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  int failures = 0;
  failures += run_case(2, 2, 1, 16, 16, true, true, rng);
  failures += run_case(1, 2, 150, 32, 48, true, true, rng);  // crosses two block boundaries
  failures += run_case(2, 1, 64, 16, 32, false, false, rng);
  failures += run_case(1, 3, 77, 48, 16, true, false, rng);
  std::printf("%d passed, %d failed\n", 12 - failures, failures);
  return failures == 0 ? 0 : 1;
}
