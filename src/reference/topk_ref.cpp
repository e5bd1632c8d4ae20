// Top-k attention (SPEC 3(a)): softmax over the k largest visible logits of each
// query (all visible ones when fewer than k); and top-k feed-forward.
#include <numeric>

#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {
namespace {

// Indices of the k largest entries of x (all when k >= size); ties by lower index.
std::vector<int64_t> top_indices(const std::vector<double>& x, int64_t k) {
  std::vector<int64_t> idx(x.size());
  std::iota(idx.begin(), idx.end(), 0);
  if (k >= static_cast<int64_t>(x.size())) return idx;
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int64_t i, int64_t j) { return x[i] > x[j] || (x[i] == x[j] && i < j); });
  idx.resize(k);
  return idx;
}

}  // namespace

void topk_ref(const AttentionArgs& a, const AttentionOptions& o, const TopkConfig& c) {
  const Dims n(a);
  const double s = logit_scale(o, n.Dk);
  std::vector<double> logits, kept;
  std::vector<const double*> vrows;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = key_length(a, b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = visible_keys(o.causal, n.Sq, n.Sk, len, i);
        logits.resize(nk);
        for (int64_t j = 0; j < nk; ++j)
          logits[j] = s * dot(row(a.q, b, i, h), row(a.k, b, j, hk), n.Dk);
        const std::vector<int64_t> top = top_indices(logits, c.k);
        kept.resize(top.size());
        vrows.resize(top.size());
        for (size_t t = 0; t < top.size(); ++t) {
          kept[t] = logits[top[t]];
          vrows[t] = row(a.v, b, top[t], hk);
        }
        softmax_inplace(kept);
        weighted_rows(kept, vrows, n.Dv, row(a.out, b, i, h));
      }
    }
  }
}

void topk_backward_ref(const BackwardArgs& g, const AttentionOptions& o, const TopkConfig& c) {
  const AttentionArgs& a = g.forward;
  const Dims n(a);
  const double s = logit_scale(o, n.Dk);
  zero_rows(g.dq), zero_rows(g.dk), zero_rows(g.dv);
  std::vector<double> logits;
  std::vector<const double*> keys, vals;
  std::vector<double*> dkeys, dvals;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = key_length(a, b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const int64_t nk = visible_keys(o.causal, n.Sq, n.Sk, len, i);
        const double* q = row(a.q, b, i, h);
        logits.resize(nk);
        for (int64_t j = 0; j < nk; ++j) logits[j] = s * dot(q, row(a.k, b, j, hk), n.Dk);
        // Softmax backward over the kept keys; the selection itself is piecewise constant.
        keys.clear(), vals.clear(), dkeys.clear(), dvals.clear();
        for (int64_t j : top_indices(logits, c.k)) {
          keys.push_back(row(a.k, b, j, hk));
          vals.push_back(row(a.v, b, j, hk));
          dkeys.push_back(row(g.dk, b, j, hk));
          dvals.push_back(row(g.dv, b, j, hk));
        }
        softmax_row_backward(q, row(g.dout, b, i, h), keys, vals, s, n.Dk, n.Dv, row(g.dq, b, i, h),
                             dkeys, dvals);
      }
    }
  }
}

void topk_ff_ref(const ConstTensorView& x, const ConstTensorView& keys,
                 const ConstTensorView& values, const TensorView& out, int k) {
  const int64_t T = x.shape[0], Dm = x.shape[1], F = keys.shape[0], Dout = values.shape[1];
  std::vector<double> scores(F);
  for (int64_t t = 0; t < T; ++t) {
    const double* xt = x.ptr<const double>() + t * x.stride[0];
    for (int64_t j = 0; j < F; ++j)
      scores[j] = dot(xt, keys.ptr<const double>() + j * keys.stride[0], Dm);
    double* o = out.ptr<double>() + t * out.stride[0];
    std::fill(o, o + Dout, 0.0);
    for (int64_t j : top_indices(scores, k)) {
      const double r = std::max(scores[j], 0.0);
      const double* vj = values.ptr<const double>() + j * values.stride[0];
      for (int64_t d = 0; d < Dout; ++d) o[d] += r * vj[d];
    }
  }
}

}  // namespace attnkit::ref
