// Exact softmax attention, float64, naive: the baseline every mechanism is measured against.
// Every mask is applied here from its definition (Problem::keys, Problem::bias_row).
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {
namespace {

// Logits of query row i (head h, batch b) over every key, -inf where not visible.
void masked_logits(const AttentionArgs& a, const Problem& p, int64_t b, int64_t h, int64_t i,
                   std::vector<double>& logits) {
  logits.assign(p.Sk, kNegInf);
  const KeyRange r = p.keys(b, i);
  for (int64_t j = r.begin; j < r.end; ++j)
    logits[j] = p.scale * dot(row(a.q, b, i, h), row(a.k, b, j, p.kv_head(h)), p.Dk);
  if (!r.empty()) p.bias_row(b, h, i, r.begin, logits.data() + r.begin, r.size());
}

}  // namespace

void softmax_ref(const AttentionArgs& a, const Problem& p) {
  std::vector<double> logits;
  std::vector<const double*> vrows(p.Sk);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h) {
      for (int64_t j = 0; j < p.Sk; ++j) vrows[j] = row(a.v, b, j, p.kv_head(h));
      for (int64_t i = 0; i < p.Sq; ++i) {
        masked_logits(a, p, b, h, i, logits);
        if (a.lse.present()) a.lse.at<double>(b, h, i) = log_sum_exp(logits);
        softmax_inplace(logits);
        weighted_rows(logits, vrows, p.Dv, row(a.out, b, i, h));
      }
    }
}

void softmax_backward_ref(const BackwardArgs& g, const Problem& p) {
  const AttentionArgs& a = g.forward;
  zero_rows(g.dq), zero_rows(g.dk), zero_rows(g.dv);
  std::vector<double> logits, dp;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h) {
      const int64_t hk = p.kv_head(h);
      for (int64_t i = 0; i < p.Sq; ++i) {
        masked_logits(a, p, b, h, i, logits);
        softmax_inplace(logits);  // P
        const double* dout = row(g.dout, b, i, h);
        dp.assign(p.Sk, 0.0);
        double d = 0;  // dout . out = sum_j P_j dP_j
        for (int64_t j = 0; j < p.Sk; ++j) {
          if (logits[j] == 0.0) continue;
          dp[j] = dot(dout, row(a.v, b, j, hk), p.Dv);
          d += logits[j] * dp[j];
        }
        for (int64_t j = 0; j < p.Sk; ++j) {
          if (logits[j] != 0.0) add_pair_gradient(g, p, b, h, i, j, logits[j], dp[j], d);
        }
      }
    }
}

}  // namespace attnkit::ref
