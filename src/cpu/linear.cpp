// de Brebisson & Vincent linear attention with feature maps, gate and normalisers.
//
// out_i = norm_i * sum_{j visible} w_j (phi(q_i).phi(k_j)) v_j, computed per (batch, q head)
// in chunks of T query rows (the chunked form of causal prefill):
//  1. out = phi(Q) C from the carried state C = sum_j w_j phi(k_j) v_j^T, z = sum_j w_j phi(k_j);
//  2. + (phi(Q) phi(K_p)^T * w * causal mask) V_p over the keys not yet in the state (about
//     one chunk's worth), then those keys join the state (C += phi(K_p)^T (w V_p)): every
//     key's features are computed and packed once;
//  3. divide by the normaliser (none, T_i, T_i / 1000, or phi(q_i).z_i).
// Non-causal is step 1 over every valid key then step 2 with no intra block. Streaming uses
// the recurrent form (rank-1 updates of C and z).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/linear.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on
#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cmath>

#include "src/cpu/arena.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/features-inl.h"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
// Internal linkage: each target's helpers (Plan, Buffers, ...) stay in this file (the
// HWY_EXPORT tables below name the entry points through the enclosing namespace).
namespace {
using DF = hn::ScalableTag<float>;

HWY_INLINE float Normalise(LinearNorm norm, int64_t visible, float den) {
  switch (norm) {
    case LinearNorm::kNone:
      return visible > 0 ? 1.0f : 0.0f;
    case LinearNorm::kLength:
      return visible > 0 ? 1.0f / static_cast<float>(visible) : 0.0f;
    case LinearNorm::kFixed1000:
      return visible > 0 ? 1000.0f / static_cast<float>(visible) : 0.0f;
    case LinearNorm::kKernel:
      return den > 0.0f ? 1.0f / den : 0.0f;
  }
  return 1.0f;
}

HWY_INLINE float GateWeight(const AttentionArgs& a, bool gated, int64_t b, int64_t j, int64_t hk) {
  if (!gated) return 1.0f;
  const float u = 1.0f / (1.0f + std::exp(-a.gate.at<const float>(b, j, hk)));
  return u * u;
}

// The problem plus the padded dims and the chunk (T rows; Tp pending keys padded).
struct Plan : Problem {
  int64_t Dkp, Dvp, T, Tp;
  LinearConfig cfg;
};

// Per-worker scratch of a task (Carve layout): the states of its group of heads, then one
// chunk's operands. c [Dkp][Dvp] and z [Dkp] point at the state of the head being processed.
struct Scratch {
  float* states;  // [per_group][Dkp * Dvp + Dkp]
  float *c, *z;
  float* fq;    // [T][Dkp]
  float* fkt;   // [Dkp][Tp]
  float* vb;    // [Tp][Dvp]
  float* s;     // [T][Tp]
  float* acc;   // [T][Dvp]
  float* den;   // [Tp]
  float* w;     // [Tp]
  float* row;   // [Dkp]
  float* wide;  // [max(Dkp, Dvp)]: bfloat16 rows widened
  Scratch(Carve& k, const Plan& n, int64_t per_group)
      : states(k.take(per_group * (n.Dkp * n.Dvp + n.Dkp))),
        c(nullptr),
        z(nullptr),
        fq(k.take(n.T * n.Dkp)),
        fkt(k.take(n.Dkp * n.Tp)),
        vb(k.take(n.Tp * n.Dvp)),
        s(k.take(n.T * n.Tp)),
        acc(k.take(n.T * n.Dvp)),
        den(k.take(n.Tp)),
        w(k.take(n.Tp)),
        row(k.take(n.Dkp)),
        wide(k.take(std::max(n.Dkp, n.Dvp))) {}
};

// Keys [j0, j1) (at most Tp) into sc.fkt (features, transposed), sc.vb (values) and sc.w
// (weights): each key's features are computed once.
HWY_INLINE void LoadKeys(const AttentionArgs& a, const Plan& n, int64_t b, int64_t hk, int64_t j0,
                         int64_t j1, Scratch& sc) {
  const int64_t cnt = j1 - j0, cols = pad_to_state(cnt);
  for (int64_t r = 0; r < n.Dk; ++r)
    std::fill(sc.fkt + r * n.Tp + cnt, sc.fkt + r * n.Tp + cols, 0.0f);
  std::fill(sc.w + cnt, sc.w + cols, 0.0f);  // vector loops read the padding
  for (int64_t j = 0; j < cnt; ++j) {
    if (j0 + j + kPrefetchRows < a.k.shape[1]) {
      PrefetchRow(a.k.row_address(b, j0 + j + kPrefetchRows, hk), n.Dk * dtype_size(a.k.dtype));
      PrefetchRow(a.v.row_address(b, j0 + j + kPrefetchRows, hk), n.Dv * dtype_size(a.v.dtype));
    }
    FeatureRow(RowF32(a.k, b, j0 + j, hk, sc.wide), n.Dk, n.Dkp, n.cfg.map, sc.row);
    for (int64_t r = 0; r < n.Dk; ++r) sc.fkt[r * n.Tp + j] = sc.row[r];
    sc.w[j] = GateWeight(a, n.cfg.gated, b, j0 + j, hk);
    CopyPadded(RowF32(a.v, b, j0 + j, hk, sc.wide), n.Dv, sc.vb + j * n.Dvp, n.Dvp);
  }
}

// C += (phi(K)^T diag(w)) V and z += phi(K)^T w for the cnt keys loaded in sc.
HWY_INLINE void AddToState(const Plan& n, int64_t cnt, Scratch& sc) {
  for (int64_t r = 0; r < n.Dk; ++r)
    sc.z[r] += WeightedSum(sc.fkt + r * n.Tp, n.cfg.gated ? sc.w : nullptr, cnt);
  MatMul(sc.fkt, n.Tp, sc.vb, n.Dvp, sc.c, n.Dvp, n.Dk, n.Dvp, cnt, /*accumulate=*/true);
}

// Query rows [i0, i0 + T) of head h against the state in sc.c / sc.z, which holds keys
// [0, kdone); returns the keys it holds afterwards (the same for every head of a batch).
int64_t AttendChunk(const AttentionArgs& a, const Plan& n, int64_t b, int64_t h, int64_t i0,
                    int64_t kdone, Scratch& sc) {
  const int64_t hk = h / (n.Hq / n.Hk);
  const int64_t rows = std::min(n.T, n.Sq - i0);
  const int64_t lo = n.keys(b, i0).end;
  const int64_t hi = n.keys(b, i0 + rows - 1).end;
  // 1. Keys every row sees go straight into the state while more than Tp keys are pending
  //    (a long causal offset, or non-causal); since hi - lo < T this leaves at most Tp.
  while (hi - kdone > n.Tp) {
    const int64_t j1 = std::min(lo, kdone + n.T);
    LoadKeys(a, n, b, hk, kdone, j1, sc);
    AddToState(n, j1 - kdone, sc);
    kdone = j1;
  }
  // 2. The state's part: phi(Q) C and phi(Q) z.
  for (int64_t r = 0; r < rows; ++r) {
    if (i0 + r + kPrefetchRows < n.Sq)
      PrefetchRow(a.q.row_address(b, i0 + r + kPrefetchRows, h), n.Dk * dtype_size(a.q.dtype));
    FeatureRow(RowF32(a.q, b, i0 + r, h, sc.wide), n.Dk, n.Dkp, n.cfg.map, sc.fq + r * n.Dkp);
    sc.den[r] = Dot(sc.fq + r * n.Dkp, sc.z, n.Dkp);
  }
  MatMul(sc.fq, n.Dkp, sc.c, n.Dvp, sc.acc, n.Dvp, rows, n.Dvp, n.Dk, /*accumulate=*/false);
  // 3. The pending keys [kdone, hi): a masked intra-chunk matmul, then into the state.
  if (hi > kdone) {
    const int64_t cnt = hi - kdone, cols = pad_to_state(cnt);
    LoadKeys(a, n, b, hk, kdone, hi, sc);
    MatMul(sc.fq, n.Dkp, sc.fkt, n.Tp, sc.s, n.Tp, rows, cols, n.Dk, /*accumulate=*/false);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t vis = n.keys(b, i0 + r).end - kdone;
      sc.den[r] += MaskRow(sc.s + r * n.Tp, n.cfg.gated ? sc.w : nullptr, vis, cols);
    }
    MatMul(sc.s, n.Tp, sc.vb, n.Dvp, sc.acc, n.Dvp, rows, n.Dvp, cnt, /*accumulate=*/true);
    AddToState(n, cnt, sc);
    kdone = hi;
  }
  // 4. Normalise.
  for (int64_t r = 0; r < rows; ++r) {
    const float f = Normalise(n.cfg.norm, n.keys(b, i0 + r).end, sc.den[r]);
    float* dst = a.out.row<float>(b, i0 + r, h);
    for (int64_t x = 0; x < n.Dv; ++x) dst[x] = f * sc.acc[r * n.Dvp + x];
  }
  return kdone;
}

void LinearForward(const AttentionArgs& a, const Problem& p, const LinearConfig& cfg,
                   Context& ctx) {
  Plan n;
  static_cast<Problem&>(n) = p;
  n.Dkp = pad_to_state(n.Dk), n.Dvp = pad_to_state(n.Dv);
  n.T = cfg.chunk, n.Tp = pad_to_state(2 * cfg.chunk);  // pending keys: at most 2 chunks
  n.cfg = cfg;
  // A task takes a group of heads chunk by chunk, so it reads neighbouring stretches of
  // each [B, S, H, D] row instead of one head's slice of every row (a page per 2 rows at
  // H * D = 512 floats). Heads are computed independently: the grouping changes no bits.
  // per_group = ceil(Hq / threads) heads, and as many groups as that takes to cover Hq
  // (not `threads` groups: 8 heads on 7 threads are 4 groups of 2, not 7 of 2).
  const int64_t per_group = hwy::DivCeil(n.Hq, std::min<int64_t>(n.Hq, ctx.num_threads()));
  const int64_t groups = hwy::DivCeil(n.Hq, per_group);
  const int64_t state = n.Dkp * n.Dvp + n.Dkp;
  ctx.reserve_scratch(Carve::floats<Scratch>(n, per_group));
  ctx.parallel_for(n.B * groups, [&](int64_t task, int worker) {
    const int64_t b = task / groups, h0 = (task % groups) * per_group;
    const int64_t h1 = std::min(n.Hq, h0 + per_group);
    Carve carve(ctx.scratch(worker));
    Scratch sc(carve, n, per_group);
    float* states = sc.states;
    std::fill(states, states + (h1 - h0) * state, 0.0f);
    for (int64_t i0 = 0, kdone = 0; i0 < n.Sq; i0 += n.T) {
      int64_t next = kdone;
      for (int64_t h = h0; h < h1; ++h) {
        sc.c = states + (h - h0) * state;
        sc.z = sc.c + n.Dkp * n.Dvp;
        next = AttendChunk(a, n, b, h, i0, kdone, sc);
      }
      kdone = next;
    }
  });
}

// A stream step's per-worker scratch (Carve layout): a feature row [features] and a value or
// numerator row [dvp].
struct StreamScratch {
  float *features, *row;
  StreamScratch(Carve& c, const LinearState& s)
      : features(c.take(s.features)), row(c.take(s.dvp)) {}
};

void LinearAppend(LinearState& s, const ConstTensorView& k, const ConstTensorView& v,
                  const ConstTensorView& gate, const LinearConfig& cfg, Context& ctx) {
  const int64_t T = k.shape[1], dk = k.shape[3];
  ctx.reserve_scratch(Carve::floats<StreamScratch>(s));
  ctx.parallel_for(
      s.batch * s.kv_heads,
      [&](int64_t slot, int worker) {
        const int64_t b = slot / s.kv_heads, hk = slot % s.kv_heads;
        Carve carve(ctx.scratch(worker));
        const StreamScratch sc(carve, s);
        float *fk = sc.features, *vb = sc.row;
        std::fill(vb, vb + s.dvp, 0.0f);
        float* c = s.c_slot(slot);
        float* z = s.z_slot(slot);
        for (int64_t t = 0; t < T; ++t) {
          FeatureRow(k.row<const float>(b, t, hk), dk, s.features, cfg.map, fk);
          if (gate.present()) {  // the gated update weight sigmoid(g)^2
            const float u = 1.0f / (1.0f + std::exp(-gate.at<const float>(b, t, hk)));
            for (int64_t r = 0; r < dk; ++r) fk[r] *= u * u;
          }
          CopyPadded(v.row<const float>(b, t, hk), s.dv, vb, s.dvp);
          for (int64_t r = 0; r < dk; ++r) {
            if (fk[r] != 0.0f) Axpy(fk[r], vb, c + r * s.dvp, s.dvp);
            z[r] += fk[r];
          }
        }
      },
      2.0 * s.batch * s.kv_heads * T * s.features * s.dvp);
}

void LinearQuery(LinearState& s, const ConstTensorView& q, const TensorView& out,
                 const LinearConfig& cfg, Context& ctx) {
  const int64_t T = q.shape[1], hq = q.shape[2], dk = q.shape[3];
  const int64_t tokens = s.tokens;
  ctx.reserve_scratch(Carve::floats<StreamScratch>(s));
  ctx.parallel_for(
      s.batch * hq,
      [&](int64_t task, int worker) {
        const int64_t b = task / hq, h = task % hq, slot = b * s.kv_heads + h / (hq / s.kv_heads);
        Carve carve(ctx.scratch(worker));
        const StreamScratch sc(carve, s);
        float *fq = sc.features, *num = sc.row;
        for (int64_t t = 0; t < T; ++t) {
          FeatureRow(q.row<const float>(b, t, h), dk, s.features, cfg.map, fq);
          MatMulRows<1>(fq, s.features, s.c_slot(slot), s.dvp, dk, s.dvp, num, s.dvp,
                        /*accumulate=*/false);
          const float f = Normalise(cfg.norm, tokens, Dot(fq, s.z_slot(slot), s.features));
          float* dst = out.row<float>(b, t, h);
          for (int64_t x = 0; x < s.dv; ++x) dst[x] = f * num[x];
        }
      },
      2.0 * s.batch * hq * T * s.features * s.dvp);
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(LinearForward);
HWY_EXPORT(LinearAppend);
HWY_EXPORT(LinearQuery);

void linear_forward(const AttentionArgs& a, const Problem& p, const LinearConfig& c, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LinearForward)(a, p, c, ctx);
}
void linear_append(LinearState& s, const ConstTensorView& k, const ConstTensorView& v,
                   const ConstTensorView& gate, const LinearConfig& c, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LinearAppend)(s, k, v, gate, c, ctx);
  s.tokens += k.shape[1];
}
void linear_query(LinearState& s, const ConstTensorView& q, const TensorView& out,
                  const LinearConfig& c, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LinearQuery)(s, q, out, c, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
