// Heinsen (SPEC 5): Attention* = softmax(log(exp(Q) exp(K)^T)) V, i.e. softmax over
// logits LSE_i(q_i + k_i), evaluated quadratically in float64 (eq. 1 with the max
// shift). No 1/sqrt(d) temperature exists in the mechanism; V may have any sign.
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {

void heinsen_ref(const AttentionArgs& a, const AttentionOptions& o) {
  const Dims n(a, o);
  std::vector<double> logits, sum(n.Dk);
  std::vector<const double*> vrows;
  for (int64_t b = 0; b < n.B; ++b) {
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = n.keys(b, i).end;
        const double* q = row(a.q, b, i, h);
        logits.resize(nk);
        vrows.resize(nk);
        for (int64_t j = 0; j < nk; ++j) {
          const double* k = row(a.k, b, j, hk);
          for (int64_t d = 0; d < n.Dk; ++d) sum[d] = q[d] + k[d];
          logits[j] = log_sum_exp(sum);
          vrows[j] = row(a.v, b, j, hk);
        }
        softmax_inplace(logits);
        weighted_rows(logits, vrows, n.Dv, row(a.out, b, i, h));
      }
    }
  }
}

}  // namespace attnkit::ref

namespace attnkit::ref {

void lse_logits_backward_ref(const BackwardArgs& g, const AttentionOptions& o, int64_t features,
                             const LogFeatureFn& log_features, const LogFeatureGradFn& chain) {
  const AttentionArgs& a = g.forward;
  const Dims n(a, o);
  zero_rows(g.dq), zero_rows(g.dk), zero_rows(g.dv);
  const int64_t F = features;
  std::vector<double> lq(F), lk, logits, sum(F), dlq(F), dlk(F);
  for (int64_t b = 0; b < n.B; ++b) {
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = n.keys(b, i).end;
        if (nk == 0) continue;
        log_features(b, i, h, /*key=*/false, lq.data());
        lk.resize(nk * F);
        logits.resize(nk);
        for (int64_t j = 0; j < nk; ++j) {
          log_features(b, j, hk, /*key=*/true, &lk[j * F]);
          for (int64_t r = 0; r < F; ++r) sum[r] = lq[r] + lk[j * F + r];
          logits[j] = log_sum_exp(sum);
        }
        softmax_inplace(logits);  // P_ij
        const double* dout = row(g.dout, b, i, h);
        double dout_o = 0;  // dout_i . out_i
        for (int64_t j = 0; j < nk; ++j) dout_o += logits[j] * dot(dout, row(a.v, b, j, hk), n.Dv);
        std::fill(dlq.begin(), dlq.end(), 0.0);
        for (int64_t j = 0; j < nk; ++j) {
          const double* v = row(a.v, b, j, hk);
          double* dv = row(g.dv, b, j, hk);
          for (int64_t d = 0; d < n.Dv; ++d) dv[d] += logits[j] * dout[d];
          // dL/dl_ij = P_ij (dout_i . v_j - dout_i . out_i); dl_ij/dlq_ir = softmax_r(lq + lk_j).
          const double dl = logits[j] * (dot(dout, v, n.Dv) - dout_o);
          for (int64_t r = 0; r < F; ++r) sum[r] = lq[r] + lk[j * F + r];
          softmax_inplace(sum);
          for (int64_t r = 0; r < F; ++r) {
            dlq[r] += dl * sum[r];
            dlk[r] = dl * sum[r];
          }
          chain(b, j, hk, /*key=*/true, dlk.data());
        }
        chain(b, i, h, /*key=*/false, dlq.data());
      }
    }
  }
}

void heinsen_backward_ref(const BackwardArgs& g, const AttentionOptions& o) {
  const AttentionArgs& a = g.forward;
  const int64_t dk = a.q.shape[3];
  lse_logits_backward_ref(
      g, o, dk,
      [&](int64_t b, int64_t n, int64_t h, bool key, double* lf) {
        const double* x = row(key ? a.k : a.q, b, n, h);
        std::copy(x, x + dk, lf);
      },
      [&](int64_t b, int64_t n, int64_t h, bool key, const double* dlf) {
        double* dx = row(key ? g.dk : g.dq, b, n, h);
        for (int64_t d = 0; d < dk; ++d) dx[d] += dlf[d];
      });
}

}  // namespace attnkit::ref
