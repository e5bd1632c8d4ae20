// Exact softmax attention backward, float32, tiled (FlashAttention-2 style), deterministic.
//   0. lse per row (the forward's when given, else a forward pass); D_i = dout_i . out_i.
//   1. Q, K and dout are packed once per head row-major and transposed, V row-major, head
//      dims padded to kStatePad, so every product is a register-tiled matmul.
//   2. A task per (batch, kv head, key partition) walks its blocks of 64 keys and, per
//      block, the group's query blocks of 128: P^T = exp(s K Q^T - lse), dv += P^T dout,
//      dP^T = V dout^T, dS^T = s P^T (dP^T - D), dk += dS^T Q, dq^T += K^T dS^T: the five
//      products of FlashAttention-2's backward, each once.
//   3. dq sums the partitions' dq^T in a fixed order.
// dk, dv rows are owned by one task; dq is split into a fixed number of partitions (not one
// per thread), so results do not depend on the thread count.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/softmax_backward.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on
#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cmath>
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

constexpr int64_t kRowBlock = 64;   // rows a task owns
constexpr int64_t kColBlock = 128;  // the other side's block
constexpr int64_t kPartitions = 4;  // fixed key partitions, each with its own dq^T sums

// Row-major [n][ldr] and transposed [dim][ldt] copies of rows 0..n of (b, ., h).
// The transpose goes 16 rows at a time from the fresh row copies, so each store run is a
// whole cache line instead of one float per column (a column stride of ldt floats touches
// a new page per element at long sequences).
void PackBoth(const ConstTensorView& t, int64_t b, int64_t h, int64_t n, int64_t dim, float* rows,
              int64_t ldr, float* cols, int64_t ldt) {
  constexpr int64_t kBlock = 16;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = std::min(n, i0 + kBlock);
    for (int64_t i = i0; i < i1; ++i)
      CopyPadded(t.row<const float>(b, i, h), dim, rows + i * ldr, ldr);
    for (int64_t c = 0; c < dim; ++c) {
      float* dst = cols + c * ldt;
      for (int64_t i = i0; i < i1; ++i) dst[i] = rows[i * ldr + c];
    }
  }
}

// dp[0:n) = scale * p * (dp - d[0:n)); n a multiple of the lanes.
HWY_INLINE void ScaledDiffProduct(const float* HWY_RESTRICT p, float* HWY_RESTRICT dp, int64_t n,
                                  float scale, const float* HWY_RESTRICT d) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto vs = hn::Set(df, scale);
  for (int64_t c = 0; c < n; c += N) {
    const auto x = hn::Sub(hn::LoadU(df, dp + c), hn::LoadU(df, d + c));
    hn::StoreU(hn::Mul(hn::Mul(vs, hn::LoadU(df, p + c)), x), df, dp + c);
  }
}

// One row of P^T: x[c] = exp(s * x[c] - lse[c]) for c in [from, to), zero elsewhere in
// [0, cols) (cols a multiple of the lanes; lse readable up to cols).
HWY_INLINE void ColumnProbabilities(float* HWY_RESTRICT x, int64_t cols, int64_t from, int64_t to,
                                    float s, const float* HWY_RESTRICT lse) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto vs = hn::Set(d, s);
  for (int64_t c = from - from % N; c < to; c += N)
    hn::StoreU(hn::Exp(d, hn::MulSub(vs, hn::LoadU(d, x + c), hn::LoadU(d, lse + c))), d, x + c);
  std::fill(x, x + std::min(from, cols), 0.0f);
  if (to < cols) std::fill(x + to, x + cols, 0.0f);
}

// ColumnProbabilities for a biased problem (softcap, ALiBi, attn_mask), scalar: x holds
// q_i . k_j for key j and queries i0 + c, turned into P with Problem's logit. slope[c] gets
// the softcap's derivative (when there is one), which dS is multiplied by.
void BiasedColumnProbabilities(const Problem& p, int64_t b, int64_t h, int64_t j, int64_t i0,
                               float* HWY_RESTRICT x, int64_t cols, int64_t from, int64_t to,
                               const float* HWY_RESTRICT lse, float* HWY_RESTRICT slope) {
  const float s = static_cast<float>(p.scale);
  for (int64_t c = from; c < to; ++c) {
    float v = s * x[c];
    if (p.mask.softcap > 0) {
      v = p.softcapped(v);
      slope[c] = p.softcap_slope(v);
    }
    v = p.add_bias(b, h, i0 + c, j, v);
    x[c] = lse[c] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(v - lse[c]);
  }
  std::fill(x, x + std::min(from, cols), 0.0f);
  if (to < cols) std::fill(x + to, x + cols, 0.0f);
}

// One softmax backward call, in named steps (Run). Its operands are one Carve layout
// (Buffers) in the Context's shared slot 1 (its forward pass uses slot 0).
struct SoftmaxBackwardCall {
  struct Side {
    const float *r, *t, *vr, *vt;  // K: Kr, Kt, Vr (no V^T); Q: Qr, Qt, dOr, dOt
  };

  const BackwardArgs& g;
  const AttentionArgs& a;
  const Problem& pr;
  const int64_t B, Sq, Hq, Dk, Sk, Hk, Dv, Dkp, Dvp, Sqp, Skp, kside, qside, kblocks, parts;
  const float scale;
  // The call's operands, zeroed (padding is read by whole vectors).
  struct Buffers {
    float* lse;         // [B][Hq][Sqp] row log-sum-exp
    float* dsum;        // [B][Hq][Sqp] D = dout . out
    float* recomputed;  // [B][Sq][Hq][Dv] the forward's out, when lse is not given
    float* kpack;       // [B][Hk][kside]: Kr [Skp][Dkp], Kt [Dk][Skp], Vr [Skp][Dvp]
    float* qpack;  // [B][Hq][qside]: Qr [Sqp][Dkp], Qt [Dk][Sqp], dOr [Sqp][Dvp], dOt [Dv][Sqp]
    float* dqt;    // [B][Hq][parts][Dkp][Sqp] dq^T partial sums per key partition
    Buffers(Carve& c, const SoftmaxBackwardCall& k)
        : lse(c.take(k.B * k.Hq * k.Sqp)),
          dsum(c.take(k.B * k.Hq * k.Sqp)),
          recomputed(c.take(k.a.lse.present() ? 0 : k.B * k.Sq * k.Hq * k.Dv)),
          kpack(c.take(k.B * k.Hk * k.kside)),
          qpack(c.take(k.B * k.Hq * k.qside)),
          dqt(c.take(k.B * k.Hq * k.parts * k.Dkp * k.Sqp)) {}
  };
  float *lse = nullptr, *dsum = nullptr, *recomputed = nullptr, *kpack = nullptr, *qpack = nullptr,
        *dqt = nullptr;

  SoftmaxBackwardCall(const BackwardArgs& g_, const Problem& p)
      : g(g_),
        a(g_.forward),
        pr(p),
        B(p.B),
        Sq(p.Sq),
        Hq(p.Hq),
        Dk(p.Dk),
        Sk(p.Sk),
        Hk(p.Hk),
        Dv(p.Dv),
        Dkp(pad_to_state(Dk)),
        Dvp(pad_to_state(Dv)),
        Sqp(pad_to_state(std::max<int64_t>(Sq, 1))),
        Skp(pad_to_state(std::max<int64_t>(Sk, 1))),
        kside(Skp * Dkp + Dk * Skp + Skp * Dvp),
        qside(Sqp * Dkp + Dk * Sqp + Sqp * Dvp + Dv * Sqp),
        kblocks(hwy::DivCeil(Sk, kRowBlock)),
        // Key block kb adds to dq^T partition kb % parts: a fixed split, so the sums do not
        // depend on the threads.
        parts(std::min<int64_t>(kPartitions, std::max<int64_t>(kblocks, 1))),
        scale(static_cast<float>(p.scale)) {}

  Side key_side(int64_t b, int64_t hk) const {
    const float* p = kpack + (b * Hk + hk) * kside;
    return Side{p, p + Skp * Dkp, p + Skp * Dkp + Dk * Skp, nullptr};
  }
  Side query_side(int64_t b, int64_t h) const {
    const float* p = qpack + (b * Hq + h) * qside;
    return Side{p, p + Sqp * Dkp, p + Sqp * Dkp + Dk * Sqp, p + Sqp * Dkp + Dk * Sqp + Sqp * Dvp};
  }
  float* dq_partial(int64_t b, int64_t h, int64_t part) const {
    return dqt + ((b * Hq + h) * parts + part) * Dkp * Sqp;
  }
  void Allocate(Context& ctx) {
    const size_t floats = Carve::floats<Buffers>(*this);
    float* block = ctx.shared_scratch(floats, /*slot=*/1);
    std::fill(block, block + floats, 0.0f);
    Carve c(block);
    const Buffers b(c, *this);
    lse = b.lse, dsum = b.dsum, recomputed = b.recomputed, kpack = b.kpack, qpack = b.qpack;
    dqt = b.dqt;
  }

  // 0. lse: the forward's when the caller kept it (AttentionArgs::lse), else from a forward
  // pass; D = dout . out with the matching out.
  void RowStatistics(Context& ctx) {
    ConstTensorView out = a.out;
    if (a.lse.present()) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < Hq; ++h)
          for (int64_t i = 0; i < Sq; ++i)
            lse[(b * Hq + h) * Sqp + i] = a.lse.at<const float>(b, h, i);
    } else {
      AttentionArgs f = a;
      f.out = make_view(recomputed, {B, Sq, Hq, Dv});
      f.lse = make_view(lse, {B, Hq, Sq});
      f.lse.stride = {Hq * Sqp, Sqp, 1, 0};
      softmax_forward(f, pr, ctx);
      out = f.out;
    }
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < Sq; ++i)
          dsum[(b * Hq + h) * Sqp + i] =
              Dot(g.dout.row<const float>(b, i, h), out.row<const float>(b, i, h), Dv);
  }

  // 1. Packed operands, one task per (batch, head) of either side.
  void Pack(Context& ctx) {
    ctx.parallel_for(B * (Hk + Hq), [&](int64_t task, int) {
      const int64_t b = task / (Hk + Hq), h = task % (Hk + Hq);
      if (h < Hk) {
        float* p = kpack + (b * Hk + h) * kside;
        PackBoth(a.k, b, h, Sk, Dk, p, Dkp, p + Skp * Dkp, Skp);
        p += Skp * Dkp + Dk * Skp;
        for (int64_t j = 0; j < Sk; ++j)
          CopyPadded(a.v.row<const float>(b, j, h), Dv, p + j * Dvp, Dvp);
      } else {
        float* p = qpack + (b * Hq + h - Hk) * qside;
        PackBoth(a.q, b, h - Hk, Sq, Dk, p, Dkp, p + Sqp * Dkp, Sqp);
        p += Sqp * Dkp + Dk * Sqp;
        PackBoth(g.dout, b, h - Hk, Sq, Dv, p, Dvp, p + Sqp * Dvp, Sqp);
      }
    });
  }

  // P^T for keys [j0, j0 + keys) and queries [i0, i0 + cols) of head h: each key's
  // queries are an interval [from, to) (both nondecreasing in the key).
  void Probabilities(int64_t b, int64_t h, int64_t j0, int64_t keys, int64_t i0, int64_t cols,
                     int64_t qrows, float* pt, float* slopes) const {
    const float* l = lse + (b * Hq + h) * Sqp + i0;
    int64_t from = 0, to = 0;
    for (int64_t j = 0; j < keys; ++j) {
      while (from < qrows && pr.keys(b, i0 + from).end <= j0 + j) ++from;
      to = std::max(to, from);
      while (to < qrows && pr.keys(b, i0 + to).begin <= j0 + j) ++to;
      if (pr.biased()) {
        BiasedColumnProbabilities(pr, b, h, j0 + j, i0, pt + j * kColBlock, cols, from, to, l,
                                  slopes + j * kColBlock);
      } else {
        ColumnProbabilities(pt + j * kColBlock, cols, from, to, scale, l);
      }
    }
  }

  // 2. One key block of 64 against the query rows [first, last) that see some key of it,
  // for every query head of the group: P^T, dv += P^T dout, dP^T, dS^T, dk += dS^T Q and
  // dq^T += K^T dS^T. scratch: P^T, dP^T, slopes [kRowBlock][kColBlock], dk, dv.
  // Per-worker scratch of KeyBlock (and ReduceDq's [16][Dk], which fits in pt).
  struct BlockScratch {
    float *pt, *dpt, *slopes;  // [kRowBlock][kColBlock]: P^T, dP^T then dS^T, softcap slopes
    float *dk, *dv;            // [kRowBlock][Dkp], [kRowBlock][Dvp] accumulators
    BlockScratch(Carve& c, int64_t dkp, int64_t dvp)
        : pt(c.take(kRowBlock * kColBlock)),
          dpt(c.take(kRowBlock * kColBlock)),
          slopes(c.take(kRowBlock * kColBlock)),
          dk(c.take(kRowBlock * dkp)),
          dv(c.take(kRowBlock * dvp)) {}
  };

  void KeyBlock(int64_t b, int64_t hk, int64_t part, int64_t kb, float* scratch) const {
    Carve carve(scratch);
    const BlockScratch w(carve, Dkp, Dvp);
    float *pt = w.pt, *dpt = w.dpt, *slopes = w.slopes, *dk = w.dk, *dv = w.dv;
    const Side K = key_side(b, hk);
    const int64_t j0 = kb * kRowBlock, keys = std::min(kRowBlock, Sk - j0);
    std::fill(dk, dk + kRowBlock * Dkp, 0.0f);
    std::fill(dv, dv + kRowBlock * Dvp, 0.0f);
    // Both bounds of a row's key range are monotone in the row, so the rows that see the
    // block are an interval: a sliding window visits N x window pairs, not N^2.
    int64_t first = 0, last = Sq;
    while (first < Sq && pr.keys(b, first).end <= j0) ++first;
    while (last > first && pr.keys(b, last - 1).begin >= j0 + keys) --last;
    for (int64_t h = hk * pr.group; h < (hk + 1) * pr.group; ++h) {
      const Side Q = query_side(b, h);
      const float* dd = dsum + (b * Hq + h) * Sqp;
      float* dq_t = dq_partial(b, h, part);
      for (int64_t i0 = first - first % kColBlock; i0 < last; i0 += kColBlock) {
        const int64_t cols = std::min(kColBlock, pad_to_state(Sq - i0)),
                      qrows = std::min(kColBlock, Sq - i0);
        MatMul(K.r + j0 * Dkp, Dkp, Q.t + i0, Sqp, pt, kColBlock, keys, cols, Dk, false);
        Probabilities(b, h, j0, keys, i0, cols, qrows, pt, slopes);
        MatMul(pt, kColBlock, Q.vr + i0 * Dvp, Dvp, dv, Dvp, keys, Dvp, qrows, true);
        MatMul(K.vr + j0 * Dvp, Dvp, Q.vt + i0, Sqp, dpt, kColBlock, keys, cols, Dv, false);
        for (int64_t j = 0; j < keys; ++j) {
          float* dsr = dpt + j * kColBlock;
          ScaledDiffProduct(pt + j * kColBlock, dsr, cols, scale, dd + i0);
          if (pr.mask.softcap > 0) {  // through the softcap: dS *= 1 - tanh^2 (P is 0 unset)
            const float* sl = slopes + j * kColBlock;
            for (int64_t c = 0; c < qrows; ++c)
              dsr[c] = pt[j * kColBlock + c] != 0.0f ? dsr[c] * sl[c] : 0.0f;
          }
        }
        MatMul(dpt, kColBlock, Q.r + i0 * Dkp, Dkp, dk, Dkp, keys, Dkp, qrows, true);
        // dq^T[:, i0:] += K_blk^T dS^T (rows beyond qrows of dS^T are zero: P^T is).
        MatMul(K.t + j0, Skp, dpt, kColBlock, dq_t + i0, Sqp, Dk, cols, keys, true);
      }
    }
    for (int64_t j = 0; j < keys; ++j) {
      std::copy_n(dk + j * Dkp, Dk, g.dk.row<float>(b, j0 + j, hk));
      std::copy_n(dv + j * Dvp, Dv, g.dv.row<float>(b, j0 + j, hk));
    }
  }

  // 3. dq = the partitions' dq^T summed in partition order, transposed, 16 rows at a time
  // (each partition is read in runs of 16 contiguous floats).
  void ReduceDq(Context& ctx) const {
    ctx.parallel_for(B * Hq, [&](int64_t bh, int worker) {
      const int64_t b = bh / Hq, h = bh % Hq;
      constexpr int64_t kRows = 16;
      float* acc = ctx.scratch(worker);  // [kRows][Dk]
      for (int64_t i0 = 0; i0 < Sq; i0 += kRows) {
        const int64_t n = std::min(kRows, Sq - i0);
        std::fill(acc, acc + kRows * Dk, 0.0f);
        for (int64_t part = 0; part < parts; ++part) {
          const float* src = dq_partial(b, h, part) + i0;
          for (int64_t d = 0; d < Dk; ++d)
            for (int64_t r = 0; r < n; ++r) acc[r * Dk + d] += src[d * Sqp + r];
        }
        for (int64_t r = 0; r < n; ++r)
          std::copy_n(acc + r * Dk, Dk, g.dq.row<float>(b, i0 + r, h));
      }
    });
  }

  void Run(Context& ctx) {
    Allocate(ctx);
    RowStatistics(ctx);
    Pack(ctx);
    ctx.reserve_scratch(Carve::floats<BlockScratch>(Dkp, Dvp));
    // A task per (batch, kv head, key partition) walks its key blocks.
    ctx.parallel_for(B * Hk * parts, [&](int64_t task, int worker) {
      const int64_t part = task % parts, bh = task / parts;
      for (int64_t kb = part; kb < kblocks; kb += parts)
        KeyBlock(bh / Hk, bh % Hk, part, kb, ctx.scratch(worker));
    });
    ReduceDq(ctx);
  }
};

void SoftmaxBackward(const BackwardArgs& g, const Problem& pr, Context& ctx) {
  SoftmaxBackwardCall(g, pr).Run(ctx);
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(SoftmaxBackward);

void softmax_backward(const BackwardArgs& g, const Problem& p, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(SoftmaxBackward)(g, p, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
