// Log-feature linear attention, the kernel of `heinsen` and `rfa` / `performer`:
//   out_i = sum_j sum_r exp(lq_ir + lk_jr) v_j / sum_j sum_r exp(lq_ir + lk_jr).
// Each (batch, kv head) keeps c = sum_j e_j v_j^T, z = sum_j e_j with e_jr = exp(lk_jr - m_r)
// against the running per-feature maximum m_r, rescaled when the maximum grows (an online
// softmax per feature). Every exp argument is <= 0, so |q|, |k| ~ 1e3 cannot overflow,
// and a key's dropped terms are below e^-87 of a key the same queries also see.
// Prefill (causal and not) runs chunks of 64 rows as small matmuls (AttendChunk below);
// streams, and prefill chunks whose keys span more than kRebaseSpan, add keys one at a time
// (AddKey / QueryRow). Both forms give the same sums in another order.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/log_linear.cpp"
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
#include "src/cpu/ops/log_chunks-inl.h"
#include "src/cpu/ops/log_features-inl.h"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
// Internal linkage: each target's helpers (Plan, Buffers, ...) stay in this file (the
// HWY_EXPORT tables below name the entry points through the enclosing namespace).
namespace {
using DF = hn::ScalableTag<float>;

// out[0:dv) for query features lq[0:fp); zeros when the slot has seen no key.
// tmp: fp + dvp floats of scratch.
HWY_INLINE void QueryRow(const Slot& st, const float* HWY_RESTRICT lq, int64_t fp, int64_t dv,
                         int64_t dvp, float* HWY_RESTRICT tmp, float* HWY_RESTRICT out) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  auto vmax = hn::Set(d, kNegInf);
  for (int64_t r = 0; r < fp; r += N)
    vmax = hn::Max(vmax, hn::Add(hn::LoadU(d, lq + r), hn::LoadU(d, st.m + r)));
  const float c = hn::GetLane(hn::MaxOfLanes(d, vmax));
  if (c == kNegInf) {
    std::fill(out, out + dv, 0.0f);
    return;
  }
  float* w = tmp;
  float* num = tmp + fp;
  const auto vc = hn::Set(d, c);
  for (int64_t r = 0; r < fp; r += N) {
    hn::StoreU(hn::Exp(d, hn::Sub(hn::Add(hn::LoadU(d, lq + r), hn::LoadU(d, st.m + r)), vc)), d,
               w + r);
  }
  MatMulRows<1>(w, fp, st.c, dvp, fp, dvp, num, dvp, /*accumulate=*/false);
  const float den = Dot(w, st.z, fp);
  const float inv = den > 0.0f ? 1.0f / den : 0.0f;
  for (int64_t x = 0; x < dv; ++x) out[x] = num[x] * inv;
}

// Per-worker scratch of a stream step (Carve layout): log-features [fp], a padded value row
// [dvp], tmp (AddKey's 2 fp, QueryRow's dvp).
struct Scratch {
  float *lf, *vbuf, *tmp;
  Scratch(Carve& k, int64_t fp, int64_t dvp)
      : lf(k.take(fp)), vbuf(k.take(dvp)), tmp(k.take(2 * fp + dvp)) {}
};

// The per-key form for one chunk: pending keys [kdone, hi) in sc.lk / sc.vb (log-features)
// and query rows [i0, i0 + rows) with log-features in sc.aq.
void PerKeyChunk(const AttentionArgs& a, const Plan& n, int64_t b, int64_t h, int64_t i0,
                 int64_t rows, int64_t kdone, ChunkScratch& sc) {
  int64_t added = kdone;
  for (int64_t i = 0; i < rows; ++i) {
    for (const int64_t upto = n.keys(b, i0 + i).end; added < upto; ++added) {
      const int64_t j = added - kdone;
      AddKey(sc.st, sc.lk + j * n.Fp, sc.vb + j * n.Dvp, n.Fp, n.Dvp, sc.tmp);
    }
    QueryRow(sc.st, sc.aq + i * n.Fp, n.Fp, n.Dv, n.Dvp, sc.tmp, a.out.row<float>(b, i0 + i, h));
  }
}

// Query rows [i0, i0 + T) of head h against the slot, which holds keys [0, kdone); returns
// the keys it holds afterwards.
int64_t AttendChunk(const AttentionArgs& a, const Plan& n, const LogFeatures& f, int64_t b,
                    int64_t h, int64_t i0, int64_t kdone, ChunkScratch& sc) {
  const int64_t hk = h / (n.Hq / n.Hk);
  const int64_t rows = std::min(n.T, n.Sq - i0);
  const int64_t lo = n.keys(b, i0).end, hi = n.keys(b, i0 + rows - 1).end;
  kdone = AddBulkKeys(a, n, f, b, hk, lo, hi, kdone, sc);
  const int64_t cnt = hi - kdone;
  if (!PrepareChunk(a, n, f, b, h, i0, rows, lo, kdone, cnt, sc)) {
    PerKeyChunk(a, n, b, h, i0, rows, kdone, sc);
    return hi;
  }
  ChunkOutputs(n, b, i0, rows, kdone, cnt, sc);
  AddToSlot(n, cnt, sc);
  for (int64_t i = 0; i < rows; ++i) {
    const float inv = sc.den[i] > 0.0f ? 1.0f / sc.den[i] : 0.0f;
    float* dst = a.out.row<float>(b, i0 + i, h);
    for (int64_t x = 0; x < n.Dv; ++x) dst[x] = sc.acc[i * n.Dvp + x] * inv;
  }
  return hi;
}

void LogLinearForward(const AttentionArgs& a, const Problem& p, const LogFeatures& f,
                      Context& ctx) {
  const Plan n(p, f);
  ctx.reserve_scratch(Carve::floats<ChunkScratch>(n, f.omega != nullptr));
  ctx.parallel_for(n.B * n.Hq, [&](int64_t task, int worker) {
    const int64_t b = task / n.Hq, h = task % n.Hq, hk = h / (n.Hq / n.Hk);
    Carve carve(ctx.scratch(worker));
    ChunkScratch sc(carve, n, f.omega != nullptr);
    ResetSlot(n, sc);
    if (f.omega != nullptr) TransposeOmega(n, f, f.omega + hk * f.features * n.Dk, sc);
    for (int64_t i0 = 0, kdone = 0; i0 < n.Sq; i0 += n.T)
      kdone = AttendChunk(a, n, f, b, h, i0, kdone, sc);
  });
}

void LogLinearAppend(LinearState& s, const ConstTensorView& k, const ConstTensorView& v,
                     const LogFeatures& f, Context& ctx) {
  const int64_t T = k.shape[1], dk = k.shape[3];
  ctx.reserve_scratch(Carve::floats<Scratch>(s.features, s.dvp));
  ctx.parallel_for(
      s.batch * s.kv_heads,
      [&](int64_t slot, int worker) {
        const int64_t b = slot / s.kv_heads, hk = slot % s.kv_heads;
        const float* omega = f.omega ? f.omega + hk * f.features * dk : nullptr;
        const Slot st{s.c_slot(slot), s.z_slot(slot), s.m_slot(slot)};
        Carve carve(ctx.scratch(worker));
        const Scratch sc(carve, s.features, s.dvp);
        float *lf = sc.lf, *vbuf = sc.vbuf, *tmp = sc.tmp;
        std::fill(vbuf, vbuf + s.dvp, 0.0f);
        for (int64_t t = 0; t < T; ++t) {
          ComputeLogFeatures(k.row<const float>(b, t, hk), dk, f, omega, s.features, true, lf);
          CopyPadded(v.row<const float>(b, t, hk), s.dv, vbuf, s.dvp);
          AddKey(st, lf, vbuf, s.features, s.dvp, tmp);
        }
      },
      4.0 * s.batch * s.kv_heads * T * s.features * (s.dvp + dk));
}

void LogLinearQuery(LinearState& s, const ConstTensorView& q, const TensorView& out,
                    const LogFeatures& f, Context& ctx) {
  const int64_t T = q.shape[1], hq = q.shape[2], dk = q.shape[3];
  ctx.reserve_scratch(Carve::floats<Scratch>(s.features, s.dvp));
  ctx.parallel_for(
      s.batch * hq,
      [&](int64_t task, int worker) {
        const int64_t b = task / hq, h = task % hq, hk = h / (hq / s.kv_heads),
                      slot = b * s.kv_heads + hk;
        const float* omega = f.omega ? f.omega + hk * f.features * dk : nullptr;
        const Slot st{s.c_slot(slot), s.z_slot(slot), s.m_slot(slot)};
        Carve carve(ctx.scratch(worker));
        const Scratch sc(carve, s.features, s.dvp);
        float *lf = sc.lf, *tmp = sc.tmp;
        for (int64_t t = 0; t < T; ++t) {
          ComputeLogFeatures(q.row<const float>(b, t, h), dk, f, omega, s.features, false, lf);
          QueryRow(st, lf, s.features, s.dv, s.dvp, tmp, out.row<float>(b, t, h));
        }
      },
      4.0 * s.batch * hq * T * s.features * (s.dvp + dk));
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(LogLinearForward);
HWY_EXPORT(LogLinearAppend);
HWY_EXPORT(LogLinearQuery);

void log_linear_forward(const AttentionArgs& a, const Problem& p, const LogFeatures& f,
                        Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LogLinearForward)(a, p, f, ctx);
}
void log_linear_append(LinearState& s, const ConstTensorView& k, const ConstTensorView& v,
                       const LogFeatures& f, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LogLinearAppend)(s, k, v, f, ctx);
  s.tokens += k.shape[1];
}
void log_linear_query(LinearState& s, const ConstTensorView& q, const TensorView& out,
                      const LogFeatures& f, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LogLinearQuery)(s, q, out, f, ctx);
}

LinearState::LinearState(int64_t batch_, int64_t kv_heads_, int64_t features_, int64_t dv_,
                         bool log_space)
    : batch(batch_),
      kv_heads(kv_heads_),
      features(pad_to_state(features_)),
      dv(dv_),
      dvp(pad_to_state(dv_)) {
  const int64_t slots = batch * kv_heads;
  c.assign(slots * features * dvp, 0.0f);
  z.assign(slots * features, 0.0f);
  if (log_space) m.assign(slots * features, -std::numeric_limits<float>::infinity());
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
