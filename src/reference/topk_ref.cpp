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

namespace {

// The masked logits of query row i over its key range r (Problem::keys, bias_row).
void range_logits(const AttentionArgs& a, const Problem& p, int64_t b, int64_t h, int64_t i,
                  const KeyRange& r, std::vector<double>& logits) {
  logits.resize(r.size());
  for (int64_t j = r.begin; j < r.end; ++j)
    logits[j - r.begin] = p.scale * dot(row(a.q, b, i, h), row(a.k, b, j, p.kv_head(h)), p.Dk);
  p.bias_row(b, h, i, r.begin, logits.data(), r.size());
}

}  // namespace

void topk_ref(const AttentionArgs& a, const Problem& p, const TopkConfig& c) {
  std::vector<double> logits, kept;
  std::vector<const double*> vrows;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h)
      for (int64_t i = 0; i < p.Sq; ++i) {
        const KeyRange r = p.keys(b, i);
        range_logits(a, p, b, h, i, r, logits);
        const std::vector<int64_t> top = top_indices(logits, c.k);
        kept.resize(top.size());
        vrows.resize(top.size());
        for (size_t t = 0; t < top.size(); ++t) {
          kept[t] = logits[top[t]];
          vrows[t] = row(a.v, b, r.begin + top[t], p.kv_head(h));
        }
        softmax_inplace(kept);
        weighted_rows(kept, vrows, p.Dv, row(a.out, b, i, h));
      }
}

void topk_backward_ref(const BackwardArgs& g, const Problem& p, const TopkConfig& c) {
  const AttentionArgs& a = g.forward;
  zero_rows(g.dq), zero_rows(g.dk), zero_rows(g.dv);
  std::vector<double> logits, kept, dp;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h) {
      const int64_t hk = p.kv_head(h);
      for (int64_t i = 0; i < p.Sq; ++i) {
        const KeyRange r = p.keys(b, i);
        range_logits(a, p, b, h, i, r, logits);
        // Softmax backward over the kept keys; the selection itself is piecewise constant.
        const std::vector<int64_t> top = top_indices(logits, c.k);
        kept.resize(top.size());
        for (size_t t = 0; t < top.size(); ++t) kept[t] = logits[top[t]];
        softmax_inplace(kept);
        const double* dout = row(g.dout, b, i, h);
        dp.resize(top.size());
        double d = 0;  // dout . out
        for (size_t t = 0; t < top.size(); ++t) {
          dp[t] = dot(dout, row(a.v, b, r.begin + top[t], hk), p.Dv);
          d += kept[t] * dp[t];
        }
        for (size_t t = 0; t < top.size(); ++t) {  // P = 0: a -inf logit kept for want of others
          if (kept[t] != 0.0) add_pair_gradient(g, p, b, h, i, r.begin + top[t], kept[t], dp[t], d);
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
