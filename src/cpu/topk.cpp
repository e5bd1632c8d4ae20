// Top-k attention and top-k feed-forward (SPEC 3).
// Keys are packed transposed once ([Dk][Skp] per kv head); a task takes a few query rows,
// computes their scores with the register-tiled matmul, and per row selects the k largest
// with a bounded min-heap behind a vector prefilter (only lanes above the current k-th
// value reach the heap), then mixes the kept values. Memory: O(rows * Sk) per thread.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/topk.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "src/cpu/arena.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
// Internal linkage: each target's helpers (Plan, Buffers, ...) stay in this file (the
// HWY_EXPORT tables below name the entry points through the enclosing namespace).
namespace {
using DF = hn::ScalableTag<float>;

constexpr int64_t kRowsPerTask = 32;

// Indices of the k largest of s[0:n) (ties to the lower index) into idx (2k entries of
// room); returns the count min(k, n). Order of the indices is unspecified. heap: k floats.
HWY_INLINE int64_t SelectTopK(const float* HWY_RESTRICT s, int64_t n, int64_t k,
                              float* HWY_RESTRICT heap, int32_t* HWY_RESTRICT idx) {
  if (n <= k) {
    for (int64_t j = 0; j < n; ++j) idx[j] = static_cast<int32_t>(j);
    return n;
  }
  // 1. The k-th largest value tau: a min-heap of the k largest seen so far.
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  std::copy_n(s, k, heap);
  std::make_heap(heap, heap + k, std::greater<float>());
  int64_t j = k;
  for (; j + N <= n; j += N) {
    if (hn::AllFalse(d, hn::Gt(hn::LoadU(d, s + j), hn::Set(d, heap[0])))) continue;
    for (int64_t x = j; x < j + N; ++x) {
      if (s[x] > heap[0]) {
        std::pop_heap(heap, heap + k, std::greater<float>());
        heap[k - 1] = s[x];
        std::push_heap(heap, heap + k, std::greater<float>());
      }
    }
  }
  for (; j < n; ++j) {
    if (s[j] > heap[0]) {
      std::pop_heap(heap, heap + k, std::greater<float>());
      heap[k - 1] = s[j];
      std::push_heap(heap, heap + k, std::greater<float>());
    }
  }
  const float tau = heap[0];
  // 2. Everything above tau, then ties at tau by increasing index until k: one pass in
  // index order, in which only vectors holding a value >= tau reach the scalar code.
  const auto vtau = hn::Set(d, tau);
  int64_t above = 0, ties = 0;
  int32_t* tie = idx + k;  // ties collected after the k slots (idx holds 2k entries)
  auto visit = [&](int64_t x) {
    if (s[x] > tau) {
      idx[above++] = static_cast<int32_t>(x);
    } else if (s[x] == tau && ties < k) {
      tie[ties++] = static_cast<int32_t>(x);
    }
  };
  int64_t x = 0;
  for (; x + N <= n; x += N) {
    if (hn::AllFalse(d, hn::Ge(hn::LoadU(d, s + x), vtau))) continue;
    for (int64_t y = x; y < x + N; ++y) visit(y);
  }
  for (; x < n; ++x) visit(x);
  const int64_t take = std::min(ties, k - above);
  std::copy_n(tie, take, idx + above);
  return above + take;
}

// Packs rows [0, n) of a matrix (row r at src + r lds, dim entries) transposed into
// dst[dim][ld], zero past n.
void PackTransposed(const float* src, int64_t lds, int64_t n, int64_t dim, int64_t ld, float* dst) {
  std::fill(dst, dst + dim * ld, 0.0f);
  Transpose(src, lds, n, dim, dst, ld);
}

// Scaled scores of query rows [i0, i0 + rows) of head h against one kv head's packed keys
// kt [Dk][Skp]: s[r][j] = scale q_r . k_j over the key range `keys` of the rows (rounded
// out to whole pads; a sliding window scores N x window, not N^2). Forward and backward
// share it, so both select the same keys. q: [rows][Dkp] scratch.
HWY_INLINE void ScoreRows(const ConstTensorView& qv, int64_t b, int64_t h, int64_t i0, int64_t rows,
                          float scale, const float* kt, int64_t Skp, const KeyRange& keys,
                          float* HWY_RESTRICT q, float* HWY_RESTRICT s) {
  const int64_t Dk = qv.shape[3], Dkp = pad_to_state(Dk);
  if (keys.empty()) return;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = qv.row<const float>(b, i0 + r, h);
    for (int64_t c = 0; c < Dk; ++c) q[r * Dkp + c] = src[c] * scale;
  }
  const int64_t j0 = keys.begin / kStatePad * kStatePad;
  const int64_t j1 = std::min(RoundUp(keys.end, kStatePad), Skp);
  MatMul(q, Dkp, kt + j0, Skp, s + j0, Skp, rows, j1 - j0, Dk, /*accumulate=*/false);
}

// The masked logits of row i over its range r (softcap, ALiBi, attn_mask), then its top k
// (indices into the row, in idx); returns the count kept and, in m, their maximum.
HWY_INLINE int64_t SelectRow(const Problem& p, int64_t b, int64_t h, int64_t i, const KeyRange& r,
                             float* HWY_RESTRICT sr, int64_t k, float* HWY_RESTRICT heap,
                             int32_t* HWY_RESTRICT idx, float& m) {
  if (r.empty()) return 0;
  if (p.biased()) p.bias_row(b, h, i, r.begin, sr + r.begin, r.size());
  const int64_t c = SelectTopK(sr + r.begin, r.size(), k, heap, idx);
  m = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < c; ++t) {
    idx[t] += static_cast<int32_t>(r.begin);
    m = std::max(m, sr[idx[t]]);
  }
  return m == -std::numeric_limits<float>::infinity() ? 0 : c;  // all kept masked: none
}

// dst = the softmax over the c kept logits sr[idx] (m: their maximum) of their value rows
// (batch b, kv head hk); acc: Dv floats of scratch.
HWY_INLINE void MixRow(const ConstTensorView& v, int64_t b, int64_t hk, const float* sr,
                       const int32_t* idx, int64_t c, float m, float* HWY_RESTRICT acc,
                       float* HWY_RESTRICT dst) {
  const int64_t Dv = v.shape[3];
  float sum = 0;
  std::fill(acc, acc + Dv, 0.0f);
  for (int64_t t = 0; t < c; ++t) {
    const float pr = std::exp(sr[idx[t]] - m);
    sum += pr;
    const float* vr = v.row<const float>(b, idx[t], hk);
    for (int64_t x = 0; x < Dv; ++x) acc[x] += pr * vr[x];
  }
  for (int64_t x = 0; x < Dv; ++x) dst[x] = acc[x] / sum;
}

// Per-worker scratch of a task of `rows` query rows (Carve layout): scaled q rows, scores,
// the selection's heap and indices (2k: ties after the k slots), probabilities and an
// accumulator row (forward) or the packed keys (backward: a task owns its kv head).
struct TaskScratch {
  float *kt, *q, *s, *heap;
  int32_t* idx;
  float *p, *acc;
  TaskScratch(Carve& c, int64_t rows, int64_t kk, int64_t Dk, int64_t Dkp, int64_t Skp, int64_t Dv,
              bool own_keys)
      : kt(c.take(own_keys ? Dk * Skp : 0)),
        q(c.take(rows * Dkp)),
        s(c.take(rows * Skp)),
        heap(c.take(kk)),
        idx(c.take_int32(2 * kk)),
        p(c.take(kk)),
        acc(c.take(Dv)) {}
};

void TopkForward(const AttentionArgs& a, const Problem& p, int k, int query_chunk, Context& ctx) {
  const int64_t B = p.B, Sq = p.Sq, Hq = p.Hq, Dk = p.Dk, Sk = p.Sk, Hk = p.Hk, Dv = p.Dv;
  const float scale = static_cast<float>(p.scale);
  const int64_t Skp = RoundUp(std::max<int64_t>(Sk, 1), kStatePad), Dkp = pad_to_state(Dk);
  const int64_t rows_per_task = std::min<int64_t>(query_chunk, std::max<int64_t>(Sq, 1));
  const int64_t blocks = hwy::DivCeil(Sq, rows_per_task);
  float* kt = ctx.shared_scratch(static_cast<size_t>(B * Hk * Dk * Skp));
  ctx.parallel_for(B * Hk, [&](int64_t bh, int) {
    const int64_t b = bh / Hk, hk = bh % Hk;
    PackTransposed(a.k.row<const float>(b, 0, hk), a.k.stride[1], Sk, Dk, Skp, kt + bh * Dk * Skp);
  });
  const int64_t kk = std::min<int64_t>(k, Sk);
  ctx.reserve_scratch(
      Carve::floats<TaskScratch>(rows_per_task, kk, Dk, Dkp, Skp, Dv, /*own_keys=*/false));
  ctx.parallel_for(B * Hq * blocks, [&](int64_t task, int worker) {
    const int64_t blk = task % blocks, bh = task / blocks, b = bh / Hq, h = bh % Hq,
                  hk = p.kv_head(h);
    const int64_t i0 = blk * rows_per_task, rows = std::min(rows_per_task, Sq - i0);
    Carve carve(ctx.scratch(worker));
    const TaskScratch w(carve, rows_per_task, kk, Dk, Dkp, Skp, Dv, false);
    float *q = w.q, *s = w.s, *heap = w.heap, *acc = w.acc;
    int32_t* idx = w.idx;
    ScoreRows(a.q, b, h, i0, rows, scale, kt + (b * Hk + hk) * Dk * Skp, Skp,
              p.keys(b, i0, i0 + rows), q, s);
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = a.out.row<float>(b, i0 + r, h);
      float* sr = s + r * Skp;
      float m;
      const int64_t c = SelectRow(p, b, h, i0 + r, p.keys(b, i0 + r), sr, k, heap, idx, m);
      if (c == 0) {
        std::fill(dst, dst + Dv, 0.0f);
        continue;
      }
      MixRow(a.v, b, hk, sr, idx, c, m, acc, dst);
    }
  });
}

// A few query rows against a long key sequence (a KV-cache stream step, a decode-shaped
// forward): one task per row scores its keys straight from the key rows (packing the whole
// cache for one row would cost more than the scores), then selects and mixes as the forward.
void TopkDecode(const AttentionArgs& a, const Problem& p, int k, Context& ctx) {
  const int64_t Sq = p.Sq, Hq = p.Hq, Dk = p.Dk, Sk = p.Sk, Dv = p.Dv;
  const float scale = static_cast<float>(p.scale);
  const int64_t kk = std::min<int64_t>(k, Sk);
  struct Scratch {
    float *q, *s, *heap;
    int32_t* idx;
    float* acc;
    Scratch(Carve& c, int64_t sk, int64_t kk, int64_t dk, int64_t dv)
        : q(c.take(dk)),
          s(c.take(std::max<int64_t>(sk, 1))),
          heap(c.take(kk)),
          idx(c.take_int32(2 * kk)),
          acc(c.take(dv)) {}
  };
  ctx.reserve_scratch(Carve::floats<Scratch>(Sk, kk, Dk, Dv));
  ctx.parallel_for(
      p.B * Sq * Hq,
      [&](int64_t task, int worker) {
        const int64_t h = task % Hq, i = (task / Hq) % Sq, b = task / (Hq * Sq);
        const int64_t hk = p.kv_head(h);
        Carve carve(ctx.scratch(worker));
        const Scratch w(carve, Sk, kk, Dk, Dv);
        const KeyRange r = p.keys(b, i);
        const float* src = a.q.row<const float>(b, i, h);
        for (int64_t x = 0; x < Dk; ++x) w.q[x] = src[x] * scale;
        for (int64_t j = r.begin; j < r.end; ++j)
          w.s[j] = Dot(w.q, a.k.row<const float>(b, j, hk), Dk);
        float* dst = a.out.row<float>(b, i, h);
        float m;
        const int64_t c = SelectRow(p, b, h, i, r, w.s, k, w.heap, w.idx, m);
        if (c == 0) {
          std::fill(dst, dst + Dv, 0.0f);
          return;
        }
        MixRow(a.v, b, hk, w.s, w.idx, c, m, w.acc, dst);
      },
      2.0 * p.B * Sq * Hq * Sk * (Dk + 1));
}

// Softmax backward of one row over its c kept keys idx (p: their probabilities, dp: scratch
// for dout . v), through the softcap's slope when there is one; adds to dq, dk, dv.
HWY_INLINE void RowBackward(const BackwardArgs& g, const Problem& pr, int64_t b, int64_t h,
                            int64_t i, const int32_t* idx, int64_t c, const float* p, float* dp) {
  const AttentionArgs& a = g.forward;
  const int64_t hk = pr.kv_head(h), Dk = pr.Dk, Dv = pr.Dv;
  const float scale = static_cast<float>(pr.scale);
  const float* dout = g.dout.row<const float>(b, i, h);
  const float* qi = a.q.row<const float>(b, i, h);
  float* dq = g.dq.row<float>(b, i, h);
  float dd = 0.0f;  // D = sum_t p_t dp_t
  for (int64_t t = 0; t < c; ++t) {
    dp[t] = Dot(dout, a.v.row<const float>(b, idx[t], hk), Dv);
    dd += p[t] * dp[t];
  }
  for (int64_t t = 0; t < c; ++t) {
    if (p[t] == 0.0f) continue;
    const float* kj = a.k.row<const float>(b, idx[t], hk);
    float ds = scale * p[t] * (dp[t] - dd);
    if (pr.mask.softcap > 0) ds *= pr.softcap_slope(pr.softcapped(scale * Dot(qi, kj, Dk)));
    float* dk = g.dk.row<float>(b, idx[t], hk);
    float* dv = g.dv.row<float>(b, idx[t], hk);
    for (int64_t d = 0; d < Dk; ++d) {
      dq[d] += ds * kj[d];
      dk[d] += ds * qi[d];
    }
    for (int64_t d = 0; d < Dv; ++d) dv[d] += p[t] * dout[d];
  }
}

// Gradients of TopkForward: per query, softmax backward over its kept keys (selected again
// from the same scores). One task per (batch, kv head) owns that head's dk, dv rows and its
// query heads' dq rows, and packs its keys into its own scratch.
void TopkBackward(const BackwardArgs& g, const Problem& pr, int k, int query_chunk, Context& ctx) {
  const AttentionArgs& a = g.forward;
  const int64_t B = pr.B, Sq = pr.Sq, Hq = pr.Hq, Dk = pr.Dk, Sk = pr.Sk, Hk = pr.Hk;
  const float scale = static_cast<float>(pr.scale);
  const int64_t Skp = RoundUp(std::max<int64_t>(Sk, 1), kStatePad), Dkp = pad_to_state(Dk);
  const int64_t rows_per_task = std::min<int64_t>(query_chunk, std::max<int64_t>(Sq, 1));
  const int64_t kk = std::min<int64_t>(k, Sk), group = pr.group;
  ctx.reserve_scratch(
      Carve::floats<TaskScratch>(rows_per_task, kk, Dk, Dkp, Skp, 0, /*own_keys=*/true));
  ctx.parallel_for(
      B * Hk,
      [&](int64_t task, int worker) {
        const int64_t b = task / Hk, hk = task % Hk;
        Carve carve(ctx.scratch(worker));
        const TaskScratch w(carve, rows_per_task, kk, Dk, Dkp, Skp, 0, true);
        float *kt = w.kt, *q = w.q, *s = w.s, *heap = w.heap, *p = w.p;
        int32_t* idx = w.idx;
        PackTransposed(a.k.row<const float>(b, 0, hk), a.k.stride[1], Sk, Dk, Skp, kt);
        zero_key_gradients(g, b, hk);
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          for (int64_t i0 = 0; i0 < Sq; i0 += rows_per_task) {
            const int64_t rows = std::min(rows_per_task, Sq - i0);
            ScoreRows(a.q, b, h, i0, rows, scale, kt, Skp, pr.keys(b, i0, i0 + rows), q, s);
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t i = i0 + r;
              std::fill_n(g.dq.row<float>(b, i, h), Dk, 0.0f);
              float* sr = s + r * Skp;
              float m;
              const int64_t c = SelectRow(pr, b, h, i, pr.keys(b, i), sr, k, heap, idx, m);
              if (c == 0) continue;
              float sum = 0.0f;
              for (int64_t t = 0; t < c; ++t) sum += p[t] = std::exp(sr[idx[t]] - m);
              for (int64_t t = 0; t < c; ++t) p[t] /= sum;
              RowBackward(g, pr, b, h, i, idx, c, p, heap);  // heap is free after selection
            }
          }
        }
      },
      2.0 * B * Hq * Sq * Sk * Dk);
}

void TopkFfForward(const ConstTensorView& x, const ConstTensorView& keys,
                   const ConstTensorView& values, const TensorView& out, int k, Context& ctx) {
  const int64_t T = x.shape[0], Dm = x.shape[1], F = keys.shape[0], Dout = values.shape[1];
  const int64_t Fp = RoundUp(std::max<int64_t>(F, 1), kStatePad), Dmp = pad_to_state(Dm);
  float* kt = ctx.shared_scratch(static_cast<size_t>(Dm * Fp));
  PackTransposed(keys.ptr<const float>(), keys.stride[0], F, Dm, Fp, kt);
  const int64_t kk = std::min<int64_t>(k, F);
  const int64_t blocks = hwy::DivCeil(T, kRowsPerTask);
  ctx.reserve_scratch(Carve::floats<TaskScratch>(kRowsPerTask, kk, Dm, Dmp, Fp, 0, false));
  ctx.parallel_for(blocks, [&](int64_t blk, int worker) {
    const int64_t t0 = blk * kRowsPerTask, rows = std::min(kRowsPerTask, T - t0);
    Carve carve(ctx.scratch(worker));
    const TaskScratch w(carve, kRowsPerTask, kk, Dm, Dmp, Fp, 0, false);
    float *q = w.q, *s = w.s, *heap = w.heap;
    int32_t* idx = w.idx;
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(x.ptr<const float>() + (t0 + r) * x.stride[0], Dm, q + r * Dmp);
    MatMul(q, Dmp, kt, Fp, s, Fp, rows, Fp, Dm, /*accumulate=*/false);
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = out.ptr<float>() + (t0 + r) * out.stride[0];
      std::fill(dst, dst + Dout, 0.0f);
      const float* sr = s + r * Fp;
      const int64_t c = SelectTopK(sr, F, k, heap, idx);
      for (int64_t t = 0; t < c; ++t) {
        const float act = std::max(sr[idx[t]], 0.0f);
        if (act == 0.0f) continue;
        const float* v = values.ptr<const float>() + idx[t] * values.stride[0];
        for (int64_t o = 0; o < Dout; ++o) dst[o] += act * v[o];
      }
    }
  });
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(TopkForward);
HWY_EXPORT(TopkDecode);
HWY_EXPORT(TopkBackward);
HWY_EXPORT(TopkFfForward);

void topk_forward(const AttentionArgs& a, const Problem& p, int k, int query_chunk, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(TopkForward)(a, p, k, query_chunk, ctx);
}
void topk_decode(const AttentionArgs& a, const Problem& p, int k, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(TopkDecode)(a, p, k, ctx);
}
void topk_backward(const BackwardArgs& g, const Problem& p, int k, int query_chunk, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(TopkBackward)(g, p, k, query_chunk, ctx);
}
void topk_ff_forward(const ConstTensorView& x, const ConstTensorView& keys,
                     const ConstTensorView& values, const TensorView& out, int k, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(TopkFfForward)(x, keys, values, out, k, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
