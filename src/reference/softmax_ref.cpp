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
  std::vector<const double*> keys, vals;
  std::vector<double*> dkeys, dvals;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = key_length(a, b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        keys.clear(), vals.clear(), dkeys.clear(), dvals.clear();
        for (int64_t j = 0; j < visible_keys(o.causal, n.Sq, n.Sk, len, i); ++j) {
          keys.push_back(row(a.k, b, j, hk));
          vals.push_back(row(a.v, b, j, hk));
          dkeys.push_back(row(g.dk, b, j, hk));
          dvals.push_back(row(g.dv, b, j, hk));
        }
        softmax_row_backward(row(a.q, b, i, h), row(g.dout, b, i, h), keys, vals, s, n.Dk, n.Dv,
                             row(g.dq, b, i, h), dkeys, dvals);
      }
    }
  }
}

}  // namespace attnkit::ref
