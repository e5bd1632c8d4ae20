// Chunk-wise memory-augmented attention (SPEC 4.2 + 4.3), float32. Per (batch, q head),
// chunk by chunk:
//   reads:  the chunk's queries attend over [memory ; chunk keys] (memory rows are keys and
//           values; causal: chunk tokens j <= i);
//   write:  memory rows attend over [memory ; F(chunk keys)] with values [memory ; F(values)]
//           at temperature T, F the conv / max-pool filter of arXiv 2404.00798.
// Both are small dense attentions (src/cpu/ops/attend-inl.h).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/memory.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "src/cpu/arena.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/attend-inl.h"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
// Internal linkage: each target's helpers (Plan, Buffers, ...) stay in this file (the
// HWY_EXPORT tables below name the entry points through the enclosing namespace).
namespace {

// The forward's per-worker scratch (Carve layout): memory before and after a chunk
// [m][dp], keys transposed [dp][ldk], values [ldk][dp], scores [max(m, c)][ldk], a read's
// output and the filtered keys and values of a chunk [c][dp].
struct Buffers {
  float *mem, *next, *kt, *vals, *s, *obuf, *fk, *fv;
  Buffers(Carve& k, int64_t m, int64_t c, int64_t dp, int64_t ldk)
      : mem(k.take(m * dp)),
        next(k.take(m * dp)),
        kt(k.take(dp * ldk)),
        vals(k.take(ldk * dp)),
        s(k.take(std::max(m, c) * ldk)),
        obuf(k.take(c * dp)),
        fk(k.take(c * dp)),
        fv(k.take(c * dp)) {}
};

// The backward's (Carve layout): a chunk's keys, values and their gradients [m + c][dp];
// q, dout, dq rows and filtered keys, values [c][dp]; the memory before every chunk
// [chunks + 1][m][dp], its gradient and the previous one [m][dp]; probabilities [2 (m + c)].
struct BackwardBuffers {
  float *keys, *vals, *dkeys, *dvals, *qb, *db, *dqb, *fk, *fv, *mems, *dmem, *dprev, *p;
  BackwardBuffers(Carve& k, int64_t nk_max, int64_t cs, int64_t chunks, int64_t m, int64_t dp)
      : keys(k.take(nk_max * dp)),
        vals(k.take(nk_max * dp)),
        dkeys(k.take(nk_max * dp)),
        dvals(k.take(nk_max * dp)),
        qb(k.take(cs * dp)),
        db(k.take(cs * dp)),
        dqb(k.take(cs * dp)),
        fk(k.take(cs * dp)),
        fv(k.take(cs * dp)),
        mems(k.take((chunks + 1) * m * dp)),
        dmem(k.take(m * dp)),
        dprev(k.take(m * dp)),
        p(k.take(2 * nk_max)) {}
};

// Filtered rows [t0, t1) of t at (b, hk) into out [t1 - t0][dp]: 'same' padding inside
// [t0, t1), left = (width - 1) / 2; conv (weights or box) or max-pool.
void FilterRows(const ConstTensorView& t, int64_t b, int64_t hk, int64_t t0, int64_t t1, int64_t d,
                int64_t dp, const MemoryConfig& c, const ConstTensorView& weights, float* out) {
  const int64_t width = c.width, left = (width - 1) / 2;
  const bool pool = c.filter_type == MemoryFilter::kMaxPool;
  for (int64_t i = t0; i < t1; ++i) {
    float* o = out + (i - t0) * dp;
    std::fill(o, o + dp, pool ? -std::numeric_limits<float>::infinity() : 0.0f);
    for (int64_t w = 0; w < width; ++w) {
      const int64_t src = i - left + w;
      if (src < t0 || src >= t1) continue;
      const float* x = t.row<const float>(b, src, hk);
      if (pool) {
        for (int64_t x0 = 0; x0 < d; ++x0) o[x0] = std::max(o[x0], x[x0]);
      } else {
        const float wt =
            weights.present() ? weights.at<const float>(hk, w) : 1.0f / static_cast<float>(width);
        for (int64_t x0 = 0; x0 < d; ++x0) o[x0] += wt * x[x0];
      }
    }
    std::fill(o + d, o + dp, 0.0f);
  }
}

// kt columns [col0, col0 + n) and vals rows from n rows of width d (row r at rows(r)).
template <typename KRows, typename VRows>
void PutKeys(const KRows& rows, int64_t n, int64_t col0, int64_t d, int64_t dp, int64_t ldk,
             float* kt, float* vals, const VRows& vrows) {
  for (int64_t r = 0; r < n; ++r) {
    const float* k = rows(r);
    for (int64_t x = 0; x < d; ++x) kt[x * ldk + col0 + r] = k[x];
    float* v = vals + (col0 + r) * dp;
    std::copy_n(vrows(r), d, v);
    std::fill(v + d, v + dp, 0.0f);
  }
}

void MemoryForward(const AttentionArgs& a, const Problem& pr, const MemoryConfig& c, Context& ctx) {
  const int64_t B = pr.B, S = pr.Sq, Hq = pr.Hq, D = pr.Dk, Hk = pr.Hk, m = a.memory.shape[1];
  const float scale = static_cast<float>(pr.scale);
  const bool causal = pr.causal;
  const int64_t dp = pad_to_state(D), cs = std::min<int64_t>(c.chunk, std::max<int64_t>(S, 1));
  const int64_t ldk = pad_to_state(m + cs);
  const float inv_temp =
      1.0f /
      static_cast<float>(c.temperature > 0 ? c.temperature : std::sqrt(static_cast<double>(D)));
  ctx.reserve_scratch(Carve::floats<Buffers>(m, cs, dp, ldk));
  ctx.parallel_for(B * Hq, [&](int64_t task, int worker) {
    const int64_t b = task / Hq, h = task % Hq, hk = h / (Hq / Hk);
    const int64_t len = pr.key_length(b);
    Carve carve(ctx.scratch(worker));
    Buffers buf(carve, m, cs, dp, ldk);  // mem and next swap after each chunk
    for (int64_t r = 0; r < m; ++r) {
      std::copy_n(a.memory.row<const float>(b, r, h), D, buf.mem + r * dp);
      std::fill(buf.mem + r * dp + D, buf.mem + (r + 1) * dp, 0.0f);
    }
    auto mem_row = [&](int64_t r) { return static_cast<const float*>(buf.mem + r * dp); };
    for (int64_t t0 = 0; t0 < S; t0 += cs) {
      const int64_t t1 = std::min(S, t0 + cs), valid_end = std::clamp(len, t0, t1),
                    nv = valid_end - t0;
      // Reads.
      std::fill(buf.kt, buf.kt + dp * ldk, 0.0f);
      PutKeys(mem_row, m, 0, D, dp, ldk, buf.kt, buf.vals, mem_row);
      PutKeys([&](int64_t r) { return a.k.row<const float>(b, t0 + r, hk); }, nv, m, D, dp, ldk,
              buf.kt, buf.vals, [&](int64_t r) { return a.v.row<const float>(b, t0 + r, hk); });
      auto visible = [&](int64_t r) { return m + (causal ? std::min(nv, r + 1) : nv); };
      Attend(a.q.row<const float>(b, t0, h), a.q.stride[1], t1 - t0, D, buf.kt, ldk, m + nv,
             buf.vals, dp, dp, scale, visible, buf.s, buf.obuf, dp);
      for (int64_t r = 0; r < t1 - t0; ++r)
        std::copy_n(buf.obuf + r * dp, D, a.out.row<float>(b, t0 + r, h));
      if (nv == 0) continue;  // nothing to write into memory
      // Filtered write.
      FilterRows(a.k, b, hk, t0, valid_end, D, dp, c, a.filter, buf.fk);
      FilterRows(a.v, b, hk, t0, valid_end, D, dp, c, a.filter, buf.fv);
      auto fk_row = [&](int64_t r) { return static_cast<const float*>(buf.fk + r * dp); };
      auto fv_row = [&](int64_t r) { return static_cast<const float*>(buf.fv + r * dp); };
      PutKeys(fk_row, nv, m, D, dp, ldk, buf.kt, buf.vals, fv_row);
      Attend(
          buf.mem, dp, m, D, buf.kt, ldk, m + nv, buf.vals, dp, dp, inv_temp,
          [&](int64_t) { return m + nv; }, buf.s, buf.next, dp);
      std::swap(buf.mem, buf.next);
    }
    if (a.memory_out.present()) {
      for (int64_t r = 0; r < m; ++r)
        std::copy_n(buf.mem + r * dp, D, a.memory_out.row<float>(b, r, h));
    }
  });
}

// Adjoint of FilterRows: adds grad [t1 - t0][dp] of the filtered rows to dt's rows at
// (b, hk), and (conv with weights) the weights' gradient to dweights [width] when given.
// Max-pool routes to the first maximum, the one the forward keeps.
void FilterRowsBackward(const ConstTensorView& t, const TensorView& dt, int64_t b, int64_t hk,
                        int64_t t0, int64_t t1, int64_t d, int64_t dp, const MemoryConfig& c,
                        const ConstTensorView& weights, const float* grad, float* dweights) {
  const int64_t width = c.width, left = (width - 1) / 2;
  const bool pool = c.filter_type == MemoryFilter::kMaxPool;
  for (int64_t i = t0; i < t1; ++i) {
    const float* gi = grad + (i - t0) * dp;
    const int64_t lo = std::max(t0, i - left), hi = std::min(t1, i - left + width);
    if (!pool) {
      for (int64_t src = lo; src < hi; ++src) {
        const float wt = weights.present() ? weights.at<const float>(hk, src - i + left)
                                           : 1.0f / static_cast<float>(width);
        float* o = dt.row<float>(b, src, hk);
        for (int64_t x = 0; x < d; ++x) o[x] += wt * gi[x];
        if (dweights != nullptr)
          dweights[src - i + left] += Dot(gi, t.row<const float>(b, src, hk), d);
      }
      continue;
    }
    for (int64_t x = 0; x < d; ++x) {
      int64_t arg = lo;
      for (int64_t src = lo + 1; src < hi; ++src)
        if (t.row<const float>(b, src, hk)[x] > t.row<const float>(b, arg, hk)[x]) arg = src;
      if (lo < hi) dt.row<float>(b, arg, hk)[x] += gi[x];
    }
  }
}

// Gradients of MemoryForward (math in ref::memory_backward_ref). One task per (batch, kv
// head): per query head, the memory before every chunk is recomputed and kept
// ([chunks + 1][m][dp]), then chunks are differentiated last to first: the write (queries
// M, keys [M ; F(K)], values [M ; F(V)]) and the reads (chunk queries over [M ; K], [M ; V]),
// with dM carried backwards. Row-wise vector ops: the attentions are m + chunk wide.
// One (batch b, kv head hk) task of the backward: per query head, the memory before every
// chunk is replayed, then chunks are differentiated last to first (the write, then the
// reads), through the filter's adjoint (dw: this task's filter gradient, or null).
struct MemoryBackwardTask {
  const BackwardArgs& g;
  const AttentionArgs& a;
  const Problem& pr;
  const MemoryConfig& c;
  const BackwardBuffers& w;
  float* dw;
  const int64_t b, hk, m, dp, cs, chunks, nk_max, len;
  const float inv_temp;

  // Chunk tau's rows [t0, t1) and its valid count nv.
  std::tuple<int64_t, int64_t, int64_t> Span(int64_t tau) const {
    const int64_t t0 = tau * cs, t1 = std::min(pr.Sq, t0 + cs);
    return {t0, t1, std::clamp(len, t0, t1) - t0};
  }

  // [M ; F(K)] and [M ; F(V)] of chunk tau into keys, vals (the write's operands).
  void WriteOperands(int64_t tau) const {
    const auto [t0, t1, nv] = Span(tau);
    FilterRows(a.k, b, hk, t0, t0 + nv, pr.Dk, dp, c, a.filter, w.fk);
    FilterRows(a.v, b, hk, t0, t0 + nv, pr.Dk, dp, c, a.filter, w.fv);
    std::copy_n(w.mems + tau * m * dp, m * dp, w.keys);
    std::copy_n(w.mems + tau * m * dp, m * dp, w.vals);
    std::copy_n(w.fk, nv * dp, w.keys + m * dp);
    std::copy_n(w.fv, nv * dp, w.vals + m * dp);
  }

  void ClearKeyGradients() const {
    std::fill(w.dkeys, w.dkeys + nk_max * dp, 0.0f);
    std::fill(w.dvals, w.dvals + nk_max * dp, 0.0f);
  }

  // Forward replay of head h: mems[tau] is the memory before chunk tau.
  void ReplayMemories(int64_t h) const {
    for (int64_t r = 0; r < m; ++r)
      CopyPadded(a.memory.row<const float>(b, r, h), pr.Dk, w.mems + r * dp, dp);
    for (int64_t tau = 0; tau < chunks; ++tau) {
      const int64_t nv = std::get<2>(Span(tau));
      float* next = w.mems + (tau + 1) * m * dp;
      if (nv == 0) {
        std::copy_n(w.mems + tau * m * dp, m * dp, next);
        continue;
      }
      WriteOperands(tau);
      std::fill(next, next + m * dp, 0.0f);
      for (int64_t r = 0; r < m; ++r) {
        SoftmaxRow(w.keys + r * dp, w.keys, m + nv, dp, inv_temp, w.p);
        for (int64_t j = 0; j < m + nv; ++j) Axpy(w.p[j], w.vals + j * dp, next + r * dp, dp);
      }
    }
  }

  // The write of chunk tau: dmem (after it) into dprev (before it) and the filtered rows'
  // gradients into dk, dv (and dw).
  void WriteBackward(int64_t tau, const float* dmem, float* dprev) const {
    int64_t t0, t1, nv;  // not a structured binding: the lambda below captures nv (clang 14)
    std::tie(t0, t1, nv) = Span(tau);
    const float* mem = w.mems + tau * m * dp;
    WriteOperands(tau);
    ClearKeyGradients();
    AttendBackwardRows(
        mem, dmem, m, w.keys, w.vals, m + nv, dp, inv_temp, [&](int64_t) { return m + nv; }, w.p,
        dprev, w.dkeys, w.dvals);
    for (int64_t x = 0; x < m * dp; ++x) dprev[x] += w.dkeys[x] + w.dvals[x];
    FilterRowsBackward(a.k, g.dk, b, hk, t0, t0 + nv, pr.Dk, dp, c, a.filter, w.dkeys + m * dp, dw);
    FilterRowsBackward(a.v, g.dv, b, hk, t0, t0 + nv, pr.Dv, dp, c, a.filter, w.dvals + m * dp, dw);
  }

  // The reads of chunk tau by head h's queries over [M ; K, V of the chunk]: dq, and the
  // gradients of the memory (into dprev) and of the chunk's keys and values.
  void ReadsBackward(int64_t h, int64_t tau, float* dprev) const {
    // Plain variables, not a structured binding: the lambda below captures nv (C++20
    // allows capturing bindings, clang 14 does not).
    int64_t t0, t1, nv;
    std::tie(t0, t1, nv) = Span(tau);
    const int64_t D = pr.Dk, rows = t1 - t0;
    const float* mem = w.mems + tau * m * dp;
    std::copy_n(mem, m * dp, w.keys);
    std::copy_n(mem, m * dp, w.vals);
    for (int64_t j = 0; j < nv; ++j) {
      CopyPadded(a.k.row<const float>(b, t0 + j, hk), D, w.keys + (m + j) * dp, dp);
      CopyPadded(a.v.row<const float>(b, t0 + j, hk), D, w.vals + (m + j) * dp, dp);
    }
    for (int64_t r = 0; r < rows; ++r) {
      CopyPadded(a.q.row<const float>(b, t0 + r, h), D, w.qb + r * dp, dp);
      CopyPadded(g.dout.row<const float>(b, t0 + r, h), D, w.db + r * dp, dp);
    }
    std::fill(w.dqb, w.dqb + rows * dp, 0.0f);
    ClearKeyGradients();
    const bool causal = pr.causal;
    AttendBackwardRows(
        w.qb, w.db, rows, w.keys, w.vals, m + nv, dp, static_cast<float>(pr.scale),
        [&](int64_t r) { return m + (causal ? std::min(nv, r + 1) : nv); }, w.p, w.dqb, w.dkeys,
        w.dvals);
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(w.dqb + r * dp, D, g.dq.row<float>(b, t0 + r, h));
    for (int64_t x = 0; x < m * dp; ++x) dprev[x] += w.dkeys[x] + w.dvals[x];
    for (int64_t j = 0; j < nv; ++j) {
      float* dk = g.dk.row<float>(b, t0 + j, hk);
      float* dv = g.dv.row<float>(b, t0 + j, hk);
      for (int64_t x = 0; x < D; ++x) {
        dk[x] += w.dkeys[(m + j) * dp + x];
        dv[x] += w.dvals[(m + j) * dp + x];
      }
    }
  }

  void Run() const {
    zero_key_gradients(g, b, hk);
    for (int64_t h = hk * pr.group; h < (hk + 1) * pr.group; ++h) {
      ReplayMemories(h);
      float *dmem = w.dmem, *dprev = w.dprev;  // the memory's gradient after / before a chunk
      std::fill(dmem, dmem + m * dp, 0.0f);
      for (int64_t tau = chunks - 1; tau >= 0; --tau) {
        std::fill(dprev, dprev + m * dp, 0.0f);
        if (std::get<2>(Span(tau)) > 0) {
          WriteBackward(tau, dmem, dprev);
        } else {
          std::copy_n(dmem, m * dp, dprev);
        }
        ReadsBackward(h, tau, dprev);
        std::swap(dmem, dprev);
      }
      if (g.dmemory.present()) {
        for (int64_t r = 0; r < m; ++r)
          std::copy_n(dmem + r * dp, pr.Dk, g.dmemory.row<float>(b, r, h));
      }
    }
  }
};

void MemoryBackward(const BackwardArgs& g, const Problem& pr, const MemoryConfig& c, Context& ctx) {
  const int64_t B = pr.B, S = pr.Sq, D = pr.Dk, Hk = pr.Hk, m = g.forward.memory.shape[1];
  const int64_t dp = pad_to_state(D), cs = std::min<int64_t>(c.chunk, std::max<int64_t>(S, 1));
  const int64_t chunks = hwy::DivCeil(S, cs), nk_max = m + cs;
  const float inv_temp =
      1.0f /
      static_cast<float>(c.temperature > 0 ? c.temperature : std::sqrt(static_cast<double>(D)));
  ctx.reserve_scratch(Carve::floats<BackwardBuffers>(nk_max, cs, chunks, m, dp));
  // The filter's gradient per (batch, kv head) task, summed over batches in order after.
  const bool with_dfilter = g.dfilter.present();
  std::vector<float> dfilter_parts(with_dfilter ? B * Hk * c.width : 0, 0.0f);
  ctx.parallel_for(B * Hk, [&](int64_t task, int worker) {
    const int64_t b = task / Hk, hk = task % Hk;
    Carve carve(ctx.scratch(worker));
    const BackwardBuffers w(carve, nk_max, cs, chunks, m, dp);
    float* dw = with_dfilter ? dfilter_parts.data() + task * c.width : nullptr;
    const MemoryBackwardTask t{
        g, g.forward, pr, c, w, dw, b, hk, m, dp, cs, chunks, nk_max, pr.key_length(b), inv_temp};
    t.Run();
  });
  if (with_dfilter) {
    for (int64_t hk = 0; hk < Hk; ++hk)
      for (int64_t x = 0; x < c.width; ++x) {
        float sum = 0.0f;
        for (int64_t b = 0; b < B; ++b) sum += dfilter_parts[(b * Hk + hk) * c.width + x];
        g.dfilter.at<float>(hk, x) = sum;
      }
  }
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(MemoryForward);
HWY_EXPORT(MemoryBackward);

void memory_forward(const AttentionArgs& a, const Problem& p, const MemoryConfig& c, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(MemoryForward)(a, p, c, ctx);
}
void memory_backward(const BackwardArgs& g, const Problem& p, const MemoryConfig& c, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(MemoryBackward)(g, p, c, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
