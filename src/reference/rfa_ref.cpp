// RFA / Performer with positive random features (SPEC 2(a)):
// phi(x) = exp(w^T x' - |x'|^2 / 2) / sqrt(S), x' = s^(1/2) x, so that
// E[phi(q).phi(k)] = exp(s q.k); out = sum_m phi(q).phi(k_m) v_m / sum_m phi(q).phi(k_m).
#include "attnkit/random.hpp"
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {
namespace {

// log phi(x) per feature (without the common 1/sqrt(S), which cancels).
void log_features(const double* omega, int64_t features, const double* x, int64_t dim,
                  double sqrt_s, double* out) {
  double sq = 0;
  for (int64_t d = 0; d < dim; ++d) sq += x[d] * x[d];
  sq *= sqrt_s * sqrt_s;
  for (int64_t r = 0; r < features; ++r) out[r] = sqrt_s * dot(omega + r * dim, x, dim) - sq / 2;
}

}  // namespace

void rfa_ref(const AttentionArgs& a, const AttentionOptions& o, const RfaConfig& c) {
  const Dims n(a);
  const double sqrt_s = std::sqrt(logit_scale(o, n.Dk));
  const int64_t S = c.features;
  const std::vector<double> omega =
      random_features(c.seed, static_cast<int>(n.Hk), c.features, static_cast<int>(n.Dk), c.orthogonal);
  std::vector<double> lq(S), lk(S), weights;
  std::vector<const double*> vrows;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = key_length(a, b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      const double* om = omega.data() + hk * S * n.Dk;
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = visible_keys(o.causal, n.Sq, n.Sk, len, i);
        log_features(om, S, row(a.q, b, i, h), n.Dk, sqrt_s, lq.data());
        // log(phi(q).phi(k_m)) = LSE_r(lq_r + lk_r); the weights are its softmax over m.
        weights.resize(nk);
        vrows.resize(nk);
        for (int64_t j = 0; j < nk; ++j) {
          log_features(om, S, row(a.k, b, j, hk), n.Dk, sqrt_s, lk.data());
          for (int64_t r = 0; r < S; ++r) lk[r] += lq[r];
          weights[j] = log_sum_exp(lk);
          vrows[j] = row(a.v, b, j, hk);
        }
        softmax_inplace(weights);
        weighted_rows(weights, vrows, n.Dv, row(a.out, b, i, h));
      }
    }
  }
}

}  // namespace attnkit::ref
