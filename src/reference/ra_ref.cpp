// Randomized Attention, the unbiased estimator of the paper's theory (SPEC 2(a), top decision):
// for each query n and sample t: m ~ pi_n = softmax_m(s q_n.k_m), w = q'_n + k'_m + eps,
// eps ~ N(0, I) in the scaled space (x' = s^(1/2) x); f(w) = sum_m softmax_m(w.k'_m - |k'_m|^2/2)
// v_m; out_n = mean_t f(w). E[out_n] is exact softmax attention. Masks apply to pi and f alike.
#include "attnkit/random.hpp"
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {

void ra_ref(const AttentionArgs& a, const AttentionOptions& o, const RaConfig& c) {
  const Dims n(a);
  const double s = logit_scale(o, n.Dk);
  const double sqrt_s = std::sqrt(s);
  const CounterRng rng(c.seed);
  std::vector<double> pi, f, omega(n.Dk), acc(n.Dv);
  std::vector<const double*> vrows;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = key_length(a, b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = visible_keys(o.causal, n.Sq, n.Sk, len, i);
        double* out = row(a.out, b, i, h);
        std::fill(out, out + n.Dv, 0.0);
        if (nk == 0) continue;
        const double* q = row(a.q, b, i, h);
        pi.resize(nk);
        f.resize(nk);
        vrows.resize(nk);
        for (int64_t j = 0; j < nk; ++j) {
          pi[j] = s * dot(q, row(a.k, b, j, hk), n.Dk);
          vrows[j] = row(a.v, b, j, hk);
        }
        softmax_inplace(pi);
        const uint64_t stream = CounterRng::stream(b, h, i);
        for (int t = 0; t < c.samples; ++t) {
          // Component m* by inverse CDF on one uniform.
          const double u = rng.uniform(stream, t);
          int64_t m = 0;
          for (double cdf = pi[0]; cdf < u && m + 1 < nk; cdf += pi[++m]) {
          }
          const double* km = row(a.k, b, m, hk);
          for (int64_t d = 0; d < n.Dk; ++d) {
            omega[d] = sqrt_s * (q[d] + km[d]) + rng.normal(stream, (1ull << 40) + t * n.Dk + d);
          }
          for (int64_t j = 0; j < nk; ++j) {
            const double* kj = row(a.k, b, j, hk);
            const double kk = dot(kj, kj, n.Dk);
            f[j] = sqrt_s * dot(omega.data(), kj, n.Dk) - s * kk / 2;
          }
          softmax_inplace(f);
          weighted_rows(f, vrows, n.Dv, acc.data());
          for (int64_t d = 0; d < n.Dv; ++d) out[d] += acc[d] / c.samples;
        }
      }
    }
  }
}

}  // namespace attnkit::ref
