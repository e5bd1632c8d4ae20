// Splitting one call into sub-problems the mechanisms compute as is: a packed batch
// (cu_seqlens) into one call per sequence, and left padding (key_begin), for a mechanism
// that does not position queries per row, into one call per batch row on its keys
// [key_begin, Sk) (its query rows before the first visible key give zeros). Sub-problems
// are views into the caller's tensors; nothing is copied.
#include <algorithm>
#include <limits>
#include <vector>

#include "attnkit/mechanism.hpp"

namespace attnkit {
namespace {

// Rows [begin, begin + count) of dimension dim of t.
template <typename View>
View slice(View t, int dim, int64_t begin, int64_t count) {
  if (!t.present()) return t;
  using Byte = std::conditional_t<std::is_same_v<View, TensorView>, char, const char>;
  t.data = static_cast<Byte*>(t.data) +
           begin * t.stride[dim] * static_cast<int64_t>(dtype_size(t.dtype));
  t.shape[dim] = count;
  return t;
}

// One sub-problem: batch row b, query rows [q0, q0 + nq), key rows [k0, k0 + nk), and row
// `seq` of the per-sequence tensors (memory, alibi_slopes [n, Hq]).
struct Piece {
  int64_t b = 0, q0 = 0, nq = 0, k0 = 0, nk = 0, seq = 0;
  int32_t key_length = -1;  // >= 0: the piece's key_lengths entry
};

std::vector<Piece> pieces(const AttentionArgs& a, const Capabilities& c, bool causal) {
  std::vector<Piece> out;
  const Mask& m = a.mask;
  if (m.varlen()) {
    for (size_t s = 0; s + 1 < m.cu_seqlens_q.size(); ++s) {
      out.push_back({.b = 0,
                     .q0 = m.cu_seqlens_q[s],
                     .nq = m.cu_seqlens_q[s + 1] - m.cu_seqlens_q[s],
                     .k0 = m.cu_seqlens_k[s],
                     .nk = m.cu_seqlens_k[s + 1] - m.cu_seqlens_k[s],
                     .seq = static_cast<int64_t>(s)});
    }
    return out;
  }
  if (m.key_begin.empty() || (c.masks & kMaskQueryPositions)) return out;
  const int64_t Sq = a.q.shape[1], Sk = a.k.shape[1];
  for (int64_t b = 0; b < a.q.shape[0]; ++b) {
    const int64_t kb = m.key_begin[b];
    const int64_t ke = a.key_lengths.empty() ? Sk : a.key_lengths[b];
    // Query rows at key positions before kb see nothing when causal (or aligned).
    const int64_t qb = causal || c.aligned ? std::clamp<int64_t>(kb - (Sk - Sq), 0, Sq) : 0;
    out.push_back({.b = b,
                   .q0 = qb,
                   .nq = Sq - qb,
                   .k0 = kb,
                   .nk = Sk - kb,
                   .seq = b,
                   .key_length = static_cast<int32_t>(ke - kb)});
  }
  return out;
}

// Rows [r0, r0 + n) of t's batch row p.b ([B, S, ...] views of q, k, v, gate and gradients).
template <typename View>
View piece_rows(const View& t, const Piece& p, int64_t r0, int64_t n) {
  return slice(slice(t, 0, p.b, 1), 1, r0, n);
}

AttentionArgs slice(const AttentionArgs& a, const Piece& p) {
  AttentionArgs s = a;
  s.q = piece_rows(a.q, p, p.q0, p.nq), s.out = piece_rows(a.out, p, p.q0, p.nq);
  s.k = piece_rows(a.k, p, p.k0, p.nk), s.v = piece_rows(a.v, p, p.k0, p.nk),
  s.gate = piece_rows(a.gate, p, p.k0, p.nk);
  s.lse = slice(slice(a.lse, 0, p.b, 1), 2, p.q0, p.nq);
  s.memory = slice(a.memory, 0, p.seq, 1), s.memory_out = slice(a.memory_out, 0, p.seq, 1);
  if (a.mask.alibi_slopes.rank == 2) s.mask.alibi_slopes = slice(a.mask.alibi_slopes, 0, p.seq, 1);
  s.mask.cu_seqlens_q = {}, s.mask.cu_seqlens_k = {}, s.mask.key_begin = {};
  s.key_lengths = {};
  return s;
}

// Fills rows [r0, r1) of dimension 1 of batch row b of t ([B, S, ...], float32/64) with x.
void fill_rows(const TensorView& t, int64_t b, int64_t r0, int64_t r1, double x) {
  if (!t.present()) return;
  const int64_t inner1 = t.rank > 2 ? t.shape[2] : 1, inner2 = t.rank > 3 ? t.shape[3] : 1;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t h = 0; h < inner1; ++h)
      for (int64_t d = 0; d < inner2; ++d) {
        const int64_t off = b * t.stride[0] + r * t.stride[1] + (t.rank > 2 ? h * t.stride[2] : 0) +
                            (t.rank > 3 ? d * t.stride[3] : 0);
        if (t.dtype == DType::kF64) {
          static_cast<double*>(t.data)[off] = x;
        } else {
          static_cast<float*>(t.data)[off] = static_cast<float>(x);
        }
      }
}

// lse [B, Hq, Sq]: rows [i0, i1) of batch row b set to -inf.
void fill_lse(const TensorView& lse, int64_t b, int64_t i0, int64_t i1) {
  if (!lse.present()) return;
  for (int64_t h = 0; h < lse.shape[1]; ++h)
    for (int64_t i = i0; i < i1; ++i)
      lse.at<float>(b, h, i) = -std::numeric_limits<float>::infinity();
}

// The rows of a left-padded batch row that no piece covers: queries before the piece's
// first row give zeros (lse -inf).
void zero_uncovered(const AttentionArgs& a, const Piece& p, bool varlen) {
  if (varlen) return;  // a packed batch's sequences cover every row
  fill_rows(a.out, p.b, 0, p.q0, 0.0);
  fill_lse(a.lse, p.b, 0, p.q0);
}

// t[i][j] (rank 2, float32/64) as a double, read or written.
double get2(const TensorView& t, int64_t i, int64_t j) {
  return t.dtype == DType::kF64 ? t.at<double>(i, j) : t.at<float>(i, j);
}
void set2(const TensorView& t, int64_t i, int64_t j, double x) {
  if (t.dtype == DType::kF64) {
    t.at<double>(i, j) = x;
  } else {
    t.at<float>(i, j) = static_cast<float>(x);
  }
}

}  // namespace

void Mechanism::run_split(const AttentionArgs& a, Context& ctx) const {
  const std::vector<Piece> ps = pieces(a, capabilities(), options_.causal);
  if (ps.empty()) {
    run(a, problem(a), ctx);
    return;
  }
  for (const Piece& p : ps) {
    zero_uncovered(a, p, a.mask.varlen());
    AttentionArgs s = slice(a, p);
    const int32_t len = p.key_length;
    if (len >= 0) s.key_lengths = {&len, 1};
    if (p.nq == 0) continue;
    if (p.nk == 0 || len == 0) {  // no key at all: zeros
      fill_rows(s.out, 0, 0, p.nq, 0.0);
      fill_lse(s.lse, 0, 0, p.nq);
      if (s.memory_out.present()) run(s, problem(s), ctx);  // memory_out still needs writing
      continue;
    }
    run(s, problem(s), ctx);
  }
}

void Mechanism::run_backward_split(const BackwardArgs& g, Context& ctx) const {
  const AttentionArgs& a = g.forward;
  const std::vector<Piece> ps = pieces(a, capabilities(), options_.causal);
  if (ps.empty()) {
    run_backward(g, problem(a), ctx);
    return;
  }
  // dfilter is shared by every piece: each piece writes a scratch copy, summed in order.
  std::vector<double> filter_sum;
  TensorView dfilter_piece;
  std::vector<char> dfilter_store;
  if (g.dfilter.present()) {
    filter_sum.assign(g.dfilter.shape[0] * g.dfilter.shape[1], 0.0);
    dfilter_store.resize(filter_sum.size() * dtype_size(g.dfilter.dtype));
    dfilter_piece = g.dfilter;
    dfilter_piece.data = dfilter_store.data();
    dfilter_piece.stride = {g.dfilter.shape[1], 1, 0, 0};
  }
  const bool varlen = a.mask.varlen();
  for (const Piece& p : ps) {
    if (!varlen) {  // rows outside the piece get zero gradients
      fill_rows(g.dq, p.b, 0, p.q0, 0.0);
      for (const TensorView& t : {g.dk, g.dv, g.dgate}) fill_rows(t, p.b, 0, p.k0, 0.0);
    }
    BackwardArgs s = g;
    s.forward = slice(a, p);
    const int32_t len = p.key_length;
    if (len >= 0) s.forward.key_lengths = {&len, 1};
    s.dout = piece_rows(g.dout, p, p.q0, p.nq), s.dq = piece_rows(g.dq, p, p.q0, p.nq);
    s.dk = piece_rows(g.dk, p, p.k0, p.nk), s.dv = piece_rows(g.dv, p, p.k0, p.nk);
    s.dgate = piece_rows(g.dgate, p, p.k0, p.nk);
    s.dmemory = slice(g.dmemory, 0, p.seq, 1);
    if (g.dfilter.present()) s.dfilter = dfilter_piece;
    if (p.nq == 0 || p.nk == 0 || len == 0) {  // nothing attends: zero gradients
      fill_rows(s.dq, 0, 0, p.nq, 0.0);
      for (const TensorView& t : {s.dk, s.dv, s.dgate}) fill_rows(t, 0, 0, p.nk, 0.0);
      if (s.dmemory.present()) fill_rows(s.dmemory, 0, 0, s.dmemory.shape[1], 0.0);
      continue;
    }
    run_backward(s, problem(s.forward), ctx);
    const int64_t F = g.dfilter.present() ? g.dfilter.shape[1] : 0;
    for (int64_t i = 0; F > 0 && i < g.dfilter.shape[0]; ++i)
      for (int64_t j = 0; j < F; ++j) filter_sum[i * F + j] += get2(dfilter_piece, i, j);
  }
  const int64_t F = g.dfilter.present() ? g.dfilter.shape[1] : 0;
  for (int64_t i = 0; F > 0 && i < g.dfilter.shape[0]; ++i)
    for (int64_t j = 0; j < F; ++j) set2(g.dfilter, i, j, filter_sum[i * F + j]);
}

}  // namespace attnkit
