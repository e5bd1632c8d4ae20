// RFA / Performer with positive random features (SPEC 2(a)):
// phi(x) = exp(w^T x' - |x'|^2 / 2) / sqrt(S), x' = s^(1/2) x, so that
// E[phi(q).phi(k)] = exp(s q.k); out = sum_m phi(q).phi(k_m) v_m / sum_m phi(q).phi(k_m).
// Evaluated in the linear form (sums over keys first) with max-shifts that cancel in
// the ratio: one shift over all keys and features, one per query over its features.
#include "attnkit/random.hpp"
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {
namespace {

// log phi(x) per feature (without the common 1/sqrt(S), which cancels).
void log_features(const double* omega, int64_t features, const double* x, int64_t dim,
                  double sqrt_s, double* out) {
  const double sq = sqrt_s * sqrt_s * dot(x, x, dim);
  for (int64_t r = 0; r < features; ++r) out[r] = sqrt_s * dot(omega + r * dim, x, dim) - sq / 2;
}

}  // namespace

void rfa_ref(const AttentionArgs& a, const AttentionOptions& o, const RfaConfig& c) {
  const Dims n(a, o);
  const double sqrt_s = std::sqrt(logit_scale(o, n.Dk));
  const int64_t S = c.features;
  const std::vector<double> omega = random_features(c.seed, static_cast<int>(n.Hk), c.features,
                                                    static_cast<int>(n.Dk), c.orthogonal);
  std::vector<double> lk, lq(S), kv(S * n.Dv), z(S);
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = n.key_length(b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      const double* om = omega.data() + hk * S * n.Dk;
      // Key features, shifted by their overall maximum.
      lk.assign(std::max<int64_t>(len, 1) * S, 0.0);
      double kmax = kNegInf;
      for (int64_t j = 0; j < len; ++j) {
        log_features(om, S, row(a.k, b, j, hk), n.Dk, sqrt_s, &lk[j * S]);
        for (int64_t r = 0; r < S; ++r) kmax = std::max(kmax, lk[j * S + r]);
      }
      // Running sums kv[r] = sum_j phi_r(k_j) v_j and z[r] = sum_j phi_r(k_j) over visible keys.
      std::fill(kv.begin(), kv.end(), 0.0);
      std::fill(z.begin(), z.end(), 0.0);
      int64_t added = 0;
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = n.keys(b, i).end;
        for (; added < nk; ++added) {
          const double* v = row(a.v, b, added, hk);
          for (int64_t r = 0; r < S; ++r) {
            const double f = std::exp(lk[added * S + r] - kmax);
            z[r] += f;
            for (int64_t d = 0; d < n.Dv; ++d) kv[r * n.Dv + d] += f * v[d];
          }
        }
        double* out = row(a.out, b, i, h);
        std::fill(out, out + n.Dv, 0.0);
        if (nk == 0) continue;
        log_features(om, S, row(a.q, b, i, h), n.Dk, sqrt_s, lq.data());
        const double qmax = *std::max_element(lq.begin(), lq.end());
        double den = 0;
        for (int64_t r = 0; r < S; ++r) {
          const double f = std::exp(lq[r] - qmax);
          den += f * z[r];
          for (int64_t d = 0; d < n.Dv; ++d) out[d] += f * kv[r * n.Dv + d];
        }
        for (int64_t d = 0; d < n.Dv; ++d) out[d] /= den;
      }
    }
  }
}

void rfa_backward_ref(const BackwardArgs& g, const AttentionOptions& o, const RfaConfig& c) {
  const AttentionArgs& a = g.forward;
  const Dims n(a, o);
  const double sqrt_s = std::sqrt(logit_scale(o, n.Dk));
  const int64_t S = c.features;
  const std::vector<double> omega = random_features(c.seed, static_cast<int>(n.Hk), c.features,
                                                    static_cast<int>(n.Dk), c.orthogonal);
  auto omega_of = [&](int64_t b, int64_t h, bool key) {
    return omega.data() + (key ? h : n.kv_head(h)) * S * n.Dk;
  };
  lse_logits_backward_ref(
      g, o, S,
      [&](int64_t b, int64_t r, int64_t h, bool key, double* lf) {
        log_features(omega_of(b, h, key), S, row(key ? a.k : a.q, b, r, h), n.Dk, sqrt_s, lf);
      },
      [&](int64_t b, int64_t r, int64_t h, bool key, const double* dlf) {
        // lf_s = sqrt_s w_s.x - s |x|^2 / 2: dx = sqrt_s sum_s dlf_s w_s - s x sum_s dlf_s.
        const double* om = omega_of(b, h, key);
        const double* x = row(key ? a.k : a.q, b, r, h);
        double* dx = row(key ? g.dk : g.dq, b, r, h);
        double total = 0;
        for (int64_t f = 0; f < S; ++f) total += dlf[f];
        for (int64_t d = 0; d < n.Dk; ++d) {
          double acc = 0;
          for (int64_t f = 0; f < S; ++f) acc += dlf[f] * om[f * n.Dk + d];
          dx[d] += sqrt_s * acc - sqrt_s * sqrt_s * x[d] * total;
        }
      });
}

}  // namespace attnkit::ref
