// Log-feature linear attention, the kernel of `heinsen` and `rfa` / `performer`:
//   out_i = sum_j sum_r exp(lq_ir + lk_jr) v_j / sum_j sum_r exp(lq_ir + lk_jr).
// Each (batch, kv head) keeps c = sum_j e_j v_j^T, z = sum_j e_j with e_jr = exp(lk_jr - m_r)
// against the running per-feature maximum m_r, rescaled when the maximum grows (an online
// softmax per feature). Every exp argument is <= 0, so |q|, |k| ~ 1e3 cannot overflow,
// and a key's dropped terms are below e^-87 of a key the same queries also see.
// The same AddKey / QueryRow serve causal prefill, non-causal and streaming, so the
// streaming output equals the last causal row bit for bit.
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

// The problem plus the padded value and feature dims.
struct Dims : Problem {
  int64_t Dvp, Fp;
  Dims(const Problem& p, const LogFeatures& f)
      : Problem(p), Dvp(pad_to_state(Dv)), Fp(pad_to_state(f.omega ? f.features : Dk)) {}
};

// Per-worker scratch (Carve layout): a slot c [fp][dvp], z, m [fp] (prefill only: streams
// keep theirs in the LinearState), log-features [fp], a padded value row [dvp], tmp
// (AddKey's 2 fp, QueryRow's dvp) and a widened bfloat16 row (head dims <= 1024).
struct Scratch {
  float *c, *z, *m, *lf, *vbuf, *tmp, *wide;
  Scratch(Carve& k, int64_t fp, int64_t dvp, bool slot)
      : c(k.take(slot ? fp * dvp : 0)),
        z(k.take(slot ? fp : 0)),
        m(k.take(slot ? fp : 0)),
        lf(k.take(fp)),
        vbuf(k.take(dvp)),
        tmp(k.take(2 * fp + dvp)),
        wide(k.take(1024)) {}
};

void LogLinearForward(const AttentionArgs& a, const Problem& p, const LogFeatures& f,
                      Context& ctx) {
  const Dims n(p, f);
  ctx.reserve_scratch(Carve::floats<Scratch>(n.Fp, n.Dvp, true));
  ctx.parallel_for(n.B * n.Hq, [&](int64_t task, int worker) {
    const int64_t b = task / n.Hq, h = task % n.Hq, hk = h / (n.Hq / n.Hk);
    const float* omega = f.omega ? f.omega + hk * f.features * n.Dk : nullptr;
    Carve carve(ctx.scratch(worker));
    const Scratch sc(carve, n.Fp, n.Dvp, true);
    const Slot st{sc.c, sc.z, sc.m};
    float *lf = sc.lf, *vbuf = sc.vbuf, *tmp = sc.tmp, *wide = sc.wide;
    std::fill(st.c, st.c + n.Fp * n.Dvp, 0.0f);
    std::fill(st.z, st.z + n.Fp, 0.0f);
    std::fill(st.m, st.m + n.Fp, kNegInf);
    std::fill(vbuf, vbuf + n.Dvp, 0.0f);
    int64_t added = 0;
    for (int64_t i = 0; i < n.Sq; ++i) {
      for (const int64_t upto = n.keys(b, i).end; added < upto; ++added) {
        if (added + kPrefetchRows < n.Sk) {
          PrefetchRow(a.k.row_address(b, added + kPrefetchRows, hk), n.Dk * dtype_size(a.k.dtype));
          PrefetchRow(a.v.row_address(b, added + kPrefetchRows, hk), n.Dv * dtype_size(a.v.dtype));
        }
        ComputeLogFeatures(RowF32(a.k, b, added, hk, wide), n.Dk, f, omega, n.Fp, true, lf);
        CopyPadded(RowF32(a.v, b, added, hk, wide), n.Dv, vbuf, n.Dvp);
        AddKey(st, lf, vbuf, n.Fp, n.Dvp, tmp);
      }
      if (i + kPrefetchRows < n.Sq)
        PrefetchRow(a.q.row_address(b, i + kPrefetchRows, h), n.Dk * dtype_size(a.q.dtype));
      ComputeLogFeatures(RowF32(a.q, b, i, h, wide), n.Dk, f, omega, n.Fp, false, lf);
      QueryRow(st, lf, n.Fp, n.Dv, n.Dvp, tmp, a.out.row<float>(b, i, h));
    }
  });
}

void LogLinearAppend(LinearState& s, const ConstTensorView& k, const ConstTensorView& v,
                     const LogFeatures& f, Context& ctx) {
  const int64_t T = k.shape[1], dk = k.shape[3];
  ctx.reserve_scratch(Carve::floats<Scratch>(s.features, s.dvp, false));
  ctx.parallel_for(
      s.batch * s.kv_heads,
      [&](int64_t slot, int worker) {
        const int64_t b = slot / s.kv_heads, hk = slot % s.kv_heads;
        const float* omega = f.omega ? f.omega + hk * f.features * dk : nullptr;
        const Slot st{s.c_slot(slot), s.z_slot(slot), s.m_slot(slot)};
        Carve carve(ctx.scratch(worker));
        const Scratch sc(carve, s.features, s.dvp, false);
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
  ctx.reserve_scratch(Carve::floats<Scratch>(s.features, s.dvp, false));
  ctx.parallel_for(
      s.batch * hq,
      [&](int64_t task, int worker) {
        const int64_t b = task / hq, h = task % hq, hk = h / (hq / s.kv_heads),
                      slot = b * s.kv_heads + hk;
        const float* omega = f.omega ? f.omega + hk * f.features * dk : nullptr;
        const Slot st{s.c_slot(slot), s.z_slot(slot), s.m_slot(slot)};
        Carve carve(ctx.scratch(worker));
        const Scratch sc(carve, s.features, s.dvp, false);
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
