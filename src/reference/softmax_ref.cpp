// Exact softmax attention, float64, naive: the baseline every mechanism is measured against.
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {

void softmax_ref(const AttentionArgs& a, const AttentionOptions& o) {
  const Dims n(a);
  const double s = logit_scale(o, n.Dk);
  std::vector<double> logits;
  std::vector<const double*> vrows;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = key_length(a, b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = visible_keys(o.causal, n.Sq, n.Sk, len, i);
        logits.resize(nk);
        vrows.resize(nk);
        for (int64_t j = 0; j < nk; ++j) {
          logits[j] = s * dot(row(a.q, b, i, h), row(a.k, b, j, hk), n.Dk);
          vrows[j] = row(a.v, b, j, hk);
        }
        if (a.lse.present()) a.lse.at<double>(b, h, i) = log_sum_exp(logits);
        softmax_inplace(logits);
        weighted_rows(logits, vrows, n.Dv, row(a.out, b, i, h));
      }
    }
  }
}

void softmax_backward_ref(const BackwardArgs& g, const AttentionOptions& o) {
  const AttentionArgs& a = g.forward;
  const Dims n(a);
  const double s = logit_scale(o, n.Dk);
  zero_rows(g.dq), zero_rows(g.dk), zero_rows(g.dv);
  std::vector<double> p, dp;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = key_length(a, b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = visible_keys(o.causal, n.Sq, n.Sk, len, i);
        const double* q = row(a.q, b, i, h);
        const double* dout = row(g.dout, b, i, h);
        p.resize(nk);
        dp.resize(nk);
        for (int64_t j = 0; j < nk; ++j) {
          p[j] = s * dot(q, row(a.k, b, j, hk), n.Dk);
          dp[j] = dot(dout, row(a.v, b, j, hk), n.Dv);
        }
        softmax_inplace(p);
        double d = 0;  // dout . O = sum_j P_j dP_j
        for (int64_t j = 0; j < nk; ++j) d += p[j] * dp[j];
        double* dq = row(g.dq, b, i, h);
        for (int64_t j = 0; j < nk; ++j) {
          const double ds = p[j] * (dp[j] - d);
          const double* k = row(a.k, b, j, hk);
          double* dk = row(g.dk, b, j, hk);
          double* dv = row(g.dv, b, j, hk);
          for (int64_t x = 0; x < n.Dk; ++x) {
            dq[x] += s * ds * k[x];
            dk[x] += s * ds * q[x];
          }
          for (int64_t x = 0; x < n.Dv; ++x) dv[x] += p[j] * dout[x];
        }
      }
    }
  }
}

}  // namespace attnkit::ref
