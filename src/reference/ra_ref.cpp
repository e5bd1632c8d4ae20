// Randomized Attention, the unbiased estimator of the paper's theory (SPEC 2(a), top decision):
// for each query n and sample t: m ~ pi_n = softmax_m(s q_n.k_m), w = q'_n + k'_m + eps,
// eps ~ N(0, I) in the scaled space (x' = s^(1/2) x); f(w) = sum_m softmax_m(w.k'_m - |k'_m|^2/2)
// v_m; out_n = mean_t f(w). E[out_n] is exact softmax attention. Key ranges and additive biases
// (ALiBi, attn_mask) apply to pi and f alike, which keeps it unbiased; a softcap (not linear in
// q.k) would not, so ra refuses it.
#include "attnkit/random.hpp"
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {

void ra_ref(const AttentionArgs& a, const Problem& p, const RaConfig& c) {
  const double s = p.scale, sqrt_s = std::sqrt(s);
  const CounterRng rng(c.seed);
  std::vector<double> bias, pi, f, omega(p.Dk), acc(p.Dv);
  std::vector<const double*> vrows;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h) {
      const int64_t hk = p.kv_head(h);
      for (int64_t i = 0; i < p.Sq; ++i) {
        const KeyRange r = p.keys(b, i);
        const int64_t nk = r.size();
        double* out = row(a.out, b, i, h);
        std::fill(out, out + p.Dv, 0.0);
        // The additive biases (ALiBi, attn_mask) of the visible keys: they enter pi and f alike.
        bias.assign(nk, 0.0);
        p.bias_row(b, h, i, r.begin, bias.data(), nk);
        const double* q = row(a.q, b, i, h);
        pi.resize(nk);
        f.resize(nk);
        vrows.resize(nk);
        for (int64_t j = 0; j < nk; ++j) {
          pi[j] = s * dot(q, row(a.k, b, r.begin + j, hk), p.Dk) + bias[j];
          vrows[j] = row(a.v, b, r.begin + j, hk);
        }
        if (log_sum_exp(pi) == kNegInf) continue;  // no visible key
        softmax_inplace(pi);
        const uint64_t stream = CounterRng::stream(b, h, i);
        for (int t = 0; t < c.samples; ++t) {
          // Component m* by inverse CDF on one uniform; a rounding shortfall of the sum
          // stops at the last key of nonzero probability (never a masked one).
          const double u = rng.uniform(stream, t);
          int64_t last = nk - 1, m = 0;
          while (last > 0 && pi[last] == 0.0) --last;
          for (double cdf = pi[0]; cdf < u && m < last; cdf += pi[++m]) {
          }
          const double* km = row(a.k, b, r.begin + m, hk);
          for (int64_t d = 0; d < p.Dk; ++d) {
            omega[d] = sqrt_s * (q[d] + km[d]) + rng.normal(stream, (1ull << 40) + t * p.Dk + d);
          }
          for (int64_t j = 0; j < nk; ++j) {
            const double* kj = row(a.k, b, r.begin + j, hk);
            const double kk = dot(kj, kj, p.Dk);
            f[j] = sqrt_s * dot(omega.data(), kj, p.Dk) - s * kk / 2 + bias[j];
          }
          softmax_inplace(f);
          weighted_rows(f, vrows, p.Dv, acc.data());
          for (int64_t d = 0; d < p.Dv; ++d) out[d] += acc[d] / c.samples;
        }
      }
    }
}

}  // namespace attnkit::ref
