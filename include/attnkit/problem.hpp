// The resolved description of one attention call: sizes, head grouping, scale, causal
// alignment and the mask policy, built once after validation (Problem::resolve) and passed
// to every kernel and reference, as FlashAttention's Flash_fwd_params. Kernels ask it which
// keys a query row sees (keys) and what a logit becomes (bias_row / add_bias); none of them
// re-derives a size or a visibility rule.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>

#include "attnkit/args.hpp"
#include "attnkit/options.hpp"

namespace attnkit {

// Keys [begin, end) of one query row; empty when end == begin.
struct KeyRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end > begin ? end - begin : 0; }
  bool empty() const { return end <= begin; }
};

struct Problem {
  explicit Problem() = default;  // built by resolve ({...} arguments mean AttentionOptions)
  int64_t B = 0, Sq = 0, Sk = 0, Hq = 0, Hk = 0, Dk = 0, Dv = 0;
  int64_t group = 1;   // query heads per kv head (Hq / Hk)
  double scale = 1.0;  // logit scale (options.scale, or 1/sqrt(Dk) when that is 0)
  bool causal = false;
  std::span<const int32_t> key_end;  // AttentionArgs::key_lengths
  Mask mask;                         // never varlen: Mechanism splits packed batches first

  // q, k, v, key_lengths and mask of validated args; scale and causal from o.
  static Problem resolve(const AttentionArgs& a, const AttentionOptions& o);

  int64_t kv_head(int64_t h) const { return h / group; }
  // Keys [0, key_length(b)) of sequence b are not right padding.
  int64_t key_length(int64_t b) const { return key_end.empty() ? Sk : key_end[b]; }
  // Key position of query row i of sequence b (bottom-right aligned by default).
  int64_t query_position(int64_t b, int64_t i) const {
    return (mask.query_positions.empty() ? Sk - Sq : mask.query_positions[b]) + i;
  }
  // Keys query row i of sequence b may see (attn_mask aside, which bias_row applies).
  KeyRange keys(int64_t b, int64_t i) const {
    KeyRange r{mask.key_begin.empty() ? 0 : mask.key_begin[b], key_length(b)};
    const int64_t p = query_position(b, i);
    if (causal || mask.window_right >= 0) {
      r.end = std::min(r.end, p + 1 + (causal ? 0 : mask.window_right));
    }
    if (mask.window_left >= 0) r.begin = std::max(r.begin, p - mask.window_left);
    r.begin = std::max<int64_t>(r.begin, 0);
    r.end = std::max(r.end, r.begin);  // empty: end == begin (never negative)
    return r;
  }
  // The union of the key ranges of rows [i0, i1) (non-empty): every bound is monotone in i.
  KeyRange keys(int64_t b, int64_t i0, int64_t i1) const {
    const KeyRange first = keys(b, i0), last = keys(b, i1 - 1);
    return {first.begin, last.end};
  }
  // Whether logits are transformed beyond scale q.k (softcap, ALiBi, attn_mask).
  bool biased() const {
    return mask.softcap > 0 || mask.alibi_slopes.present() || mask.attn_mask.present();
  }
  double alibi_slope(int64_t b, int64_t h) const {
    const ConstTensorView& s = mask.alibi_slopes;
    const int64_t off = s.rank == 1 ? h * s.stride[0] : b * s.stride[0] + h * s.stride[1];
    return s.dtype == DType::kF64 ? static_cast<const double*>(s.data)[off]
                                  : static_cast<const float*>(s.data)[off];
  }
  // s[0:n) holds x = scale q.k_j for keys j0 + [0, n) of query row i, head h of sequence b:
  // applies softcap, ALiBi and attn_mask in place (masked keys become -inf).
  template <typename T>
  void bias_row(int64_t b, int64_t h, int64_t i, int64_t j0, T* s, int64_t n) const;
  // d logit / d x for a softcapped logit c = softcap tanh(x / softcap): 1 - (c / softcap)^2.
  template <typename T>
  T softcap_slope(T capped) const {
    const T t = capped / static_cast<T>(mask.softcap);
    return T(1) - t * t;
  }
  // ALiBi and attn_mask on one (already softcapped) logit x of key j, query row i (broadcast
  // dimensions of attn_mask have stride 0: resolve sets them).
  template <typename T>
  T add_bias(int64_t b, int64_t h, int64_t i, int64_t j, T x) const {
    if (mask.alibi_slopes.present())
      x -= static_cast<T>(alibi_slope(b, h)) * static_cast<T>(std::abs(query_position(b, i) - j));
    const ConstTensorView& m = mask.attn_mask;
    if (!m.present()) return x;
    const int64_t off = b * m.stride[0] + h * m.stride[1] + i * m.stride[2] + j * m.stride[3];
    if (m.dtype == DType::kBool) {
      return static_cast<const uint8_t*>(m.data)[off] ? x : -std::numeric_limits<T>::infinity();
    }
    return x + static_cast<T>(m.dtype == DType::kF64 ? static_cast<const double*>(m.data)[off]
                                                     : static_cast<const float*>(m.data)[off]);
  }
  // Softcap alone (the part of bias_row with a derivative other than 1).
  template <typename T>
  T softcapped(T x) const {
    const T c = static_cast<T>(mask.softcap);
    return c * std::tanh(x / c);
  }
};

template <typename T>
void Problem::bias_row(int64_t b, int64_t h, int64_t i, int64_t j0, T* s, int64_t n) const {
  // One definition of the logit masks (add_bias), which the backward passes use per key.
  for (int64_t j = 0; j < n; ++j)
    s[j] = add_bias(b, h, i, j0 + j, mask.softcap > 0 ? softcapped(s[j]) : s[j]);
}

inline Problem Problem::resolve(const AttentionArgs& a, const AttentionOptions& o) {
  Problem p;
  p.B = a.q.shape[0], p.Sq = a.q.shape[1], p.Hq = a.q.shape[2], p.Dk = a.q.shape[3];
  p.Sk = a.k.shape[1], p.Hk = a.k.shape[2], p.Dv = a.v.shape[3];
  p.group = p.Hk > 0 ? p.Hq / p.Hk : 1;
  p.scale = o.scale != 0.0 ? o.scale : 1.0 / std::sqrt(static_cast<double>(p.Dk));
  p.causal = o.causal;
  p.key_end = a.key_lengths;
  p.mask = a.mask;
  p.mask.cu_seqlens_q = {}, p.mask.cu_seqlens_k = {};
  ConstTensorView& m = p.mask.attn_mask;
  for (int i = 0; i < m.rank; ++i)
    if (m.shape[i] == 1) m.stride[i] = 0;  // broadcast
  return p;
}

}  // namespace attnkit
