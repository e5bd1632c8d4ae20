// Small helpers shared by the references (shapes, rows, log-sum-exp).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "attnkit/args.hpp"
#include "attnkit/options.hpp"
#include "attnkit/problem.hpp"

namespace attnkit::ref {

inline constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The resolved problem (sizes, key lengths, causal visibility: Problem::keys), named as the
// references have always named it.
struct Dims : Problem {
  Dims(const AttentionArgs& a, const AttentionOptions& o) : Problem(Problem::resolve(a, o)) {}
};

inline double logit_scale(const AttentionOptions& o, int64_t dk) {
  return o.scale != 0.0 ? o.scale : 1.0 / std::sqrt(static_cast<double>(dk));
}

inline const double* row(const ConstTensorView& t, int64_t b, int64_t n, int64_t h) {
  return t.row<const double>(b, n, h);
}
inline double* row(const TensorView& t, int64_t b, int64_t n, int64_t h) {
  return t.row<double>(b, n, h);
}

// Sets every [B, S, H, D] row of t to zero.
inline void zero_rows(const TensorView& t) {
  for (int64_t b = 0; b < t.shape[0]; ++b)
    for (int64_t i = 0; i < t.shape[1]; ++i)
      for (int64_t h = 0; h < t.shape[2]; ++h) std::fill_n(row(t, b, i, h), t.shape[3], 0.0);
}

inline double dot(const double* x, const double* y, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

// log sum exp, -inf for an empty or all -inf input.
inline double log_sum_exp(std::span<const double> x) {
  double m = kNegInf;
  for (double v : x) m = std::max(m, v);
  if (m == kNegInf) return kNegInf;
  double s = 0;
  for (double v : x) s += std::exp(v - m);
  return m + std::log(s);
}

// In place: x <- softmax(x); all -inf (or empty) gives all zeros.
inline void softmax_inplace(std::span<double> x) {
  const double l = log_sum_exp(x);
  for (double& v : x) v = (l == kNegInf) ? 0.0 : std::exp(v - l);
}

// out[0:dv] = sum_j w[j] * rows[j][0:dv]
inline void weighted_rows(std::span<const double> w, const std::vector<const double*>& rows,
                          int64_t dv, double* out) {
  std::fill(out, out + dv, 0.0);
  for (size_t j = 0; j < w.size(); ++j)
    for (int64_t d = 0; d < dv; ++d) out[d] += w[j] * rows[j][d];
}

// Gradients of one softmax-attention row, out = sum_j P_j v_j with P = softmax_j(scale q.k_j)
// over the given keys: dP_j = dout.v_j, dS_j = P_j (dP_j - dout.out); adds scale dS_j k_j to
// dq[0:dk), scale dS_j q to dkeys[j][0:dk) and P_j dout to dvals[j][0:dv). Rows are pointer
// lists in the same order (dkeys may alias dvals).
inline void softmax_row_backward(const double* q, const double* dout,
                                 const std::vector<const double*>& keys,
                                 const std::vector<const double*>& vals, double scale, int64_t dk,
                                 int64_t dv, double* dq, const std::vector<double*>& dkeys,
                                 const std::vector<double*>& dvals) {
  const size_t n = keys.size();
  std::vector<double> p(n), dp(n);
  for (size_t j = 0; j < n; ++j) {
    p[j] = scale * dot(q, keys[j], dk);
    dp[j] = dot(dout, vals[j], dv);
  }
  softmax_inplace(p);
  double d = 0;  // dout . out = sum_j P_j dP_j
  for (size_t j = 0; j < n; ++j) d += p[j] * dp[j];
  for (size_t j = 0; j < n; ++j) {
    const double ds = scale * p[j] * (dp[j] - d);
    for (int64_t x = 0; x < dk; ++x) {
      dq[x] += ds * keys[j][x];
      dkeys[j][x] += ds * q[x];
    }
    for (int64_t x = 0; x < dv; ++x) dvals[j][x] += p[j] * dout[x];
  }
}

// One (query row i, key j) pair of a softmax backward, head h of sequence b: with P its
// weight, dp = dout_i . v_j and d = dout_i . out_i, dS = s c' P (dp - d), c' the softcap's
// slope at s q_i.k_j (1 without one); dq_i += dS k_j, dk_j += dS q_i, dv_j += P dout_i.
inline void add_pair_gradient(const BackwardArgs& g, const Problem& p, int64_t b, int64_t h,
                              int64_t i, int64_t j, double P, double dp, double d) {
  const int64_t hk = p.kv_head(h);
  const double* q = row(g.forward.q, b, i, h);
  const double* k = row(g.forward.k, b, j, hk);
  const double* dout = row(g.dout, b, i, h);
  const double slope =
      p.mask.softcap > 0 ? p.softcap_slope(p.softcapped(p.scale * dot(q, k, p.Dk))) : 1.0;
  const double ds = p.scale * slope * P * (dp - d);
  double* dq = row(g.dq, b, i, h);
  double* dk = row(g.dk, b, j, hk);
  double* dv = row(g.dv, b, j, hk);
  for (int64_t x = 0; x < p.Dk; ++x) dq[x] += ds * k[x], dk[x] += ds * q[x];
  for (int64_t x = 0; x < p.Dv; ++x) dv[x] += P * dout[x];
}

}  // namespace attnkit::ref
