// Heinsen (SPEC 5): Attention* = softmax(log(exp(Q) exp(K)^T)) V, i.e. softmax over
// logits LSE_i(q_i + k_i), evaluated quadratically in float64 (eq. 1 with the max
// shift). No 1/sqrt(d) temperature exists in the mechanism; V may have any sign.
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {

void heinsen_ref(const AttentionArgs& a, const AttentionOptions& o) {
  const Dims n(a);
  std::vector<double> logits, sum(n.Dk);
  std::vector<const double*> vrows;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = key_length(a, b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = visible_keys(o.causal, n.Sq, n.Sk, len, i);
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
