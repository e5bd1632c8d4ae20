// Causal Luna, the running-average form of SPEC 4.1(b)-(c):
//   a_j[l] = log2(1 + 2^(s k_j . p_l))   (softplus with beta = ln 2)
//   acc_t = sum_{j visible} a_j v_j^T     ([L][Dv], the fixed-size state), t = #visible
//   out_t = sum_l softmax_l(s q_t . acc_t[l] / t) acc_t[l] / t
// One task per (batch, q head); prefill and streaming share AddKey / QueryRow, so the
// streaming output equals the causal row. (Non-causal Luna is two softmax-kernel calls,
// see src/mechanisms/luna.cpp.)
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/luna.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <algorithm>
#include <cmath>
#include <limits>

#include "src/cpu/arena.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
// Internal linkage: each target's helpers (Plan, Buffers, ...) stay in this file (the
// HWY_EXPORT tables below name the entry points through the enclosing namespace).
namespace {

HWY_INLINE float SoftplusLn2(float z) {
  return z > 0.0f ? z + std::log2(1.0f + std::exp2(-z)) : std::log2(1.0f + std::exp2(z));
}

// acc[l] += a_l v for key k (v zero padded to dvp); mem(l) -> p_l row.
template <typename MemRow>
HWY_INLINE void AddKey(float* acc, const float* k, const float* v, int64_t L, int64_t dk,
                       int64_t dvp, float s, const MemRow& mem) {
  for (int64_t l = 0; l < L; ++l) Axpy(SoftplusLn2(s * Dot(k, mem(l), dk)), v, acc + l * dvp, dvp);
}

// out = softmax_l(s q . acc_l / t) acc / t; zeros when t == 0. w: L floats of scratch.
HWY_INLINE void QueryRow(const float* acc, int64_t t, const float* q, int64_t L, int64_t dk,
                         int64_t dv, int64_t dvp, float s, float* w, float* out) {
  if (t == 0) {
    std::fill(out, out + dv, 0.0f);
    return;
  }
  const float inv_t = 1.0f / static_cast<float>(t);
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t l = 0; l < L; ++l) m = std::max(m, w[l] = s * inv_t * Dot(q, acc + l * dvp, dk));
  float sum = 0;
  for (int64_t l = 0; l < L; ++l) sum += (w[l] = std::exp(w[l] - m));
  const float f = inv_t / sum;
  std::fill(out, out + dv, 0.0f);
  for (int64_t l = 0; l < L; ++l) {
    const float wl = w[l] * f;
    const float* al = acc + l * dvp;
    for (int64_t x = 0; x < dv; ++x) out[x] += wl * al[x];
  }
}

void LunaCausalForward(const AttentionArgs& a, const Problem& pr, Context& ctx) {
  const int64_t B = pr.B, Sq = pr.Sq, Hq = pr.Hq, dk = pr.Dk, dv = pr.Dv;
  const int64_t dvp = pad_to_state(dv);
  const float s = static_cast<float>(pr.scale);
  const int64_t L = a.memory.shape[1];
  // Per worker (Carve layout): acc [L][dvp], a value row [dvp], weights [L].
  struct Scratch {
    float *acc, *vb, *w;
    Scratch(Carve& c, int64_t L, int64_t dvp)
        : acc(c.take(L * dvp)), vb(c.take(dvp)), w(c.take(L)) {}
  };
  ctx.reserve_scratch(Carve::floats<Scratch>(L, dvp));
  ctx.parallel_for(B * Hq, [&](int64_t task, int worker) {
    const int64_t b = task / Hq, h = task % Hq, hk = pr.kv_head(h);
    const int64_t len = pr.key_length(b);
    Carve carve(ctx.scratch(worker));
    const Scratch sc(carve, L, dvp);
    float *acc = sc.acc, *vb = sc.vb, *w = sc.w;
    std::fill(acc, acc + L * dvp, 0.0f);
    std::fill(vb, vb + dvp, 0.0f);
    auto mem = [&](int64_t l) { return a.memory.row<const float>(b, l, h); };
    int64_t added = 0;
    auto add_upto = [&](int64_t upto) {
      for (; added < upto; ++added) {
        std::copy_n(a.v.row<const float>(b, added, hk), dv, vb);
        AddKey(acc, a.k.row<const float>(b, added, hk), vb, L, dk, dvp, s, mem);
      }
    };
    for (int64_t i = 0; i < Sq; ++i) {
      const int64_t t = pr.keys(b, i).end;
      add_upto(t);
      QueryRow(acc, t, a.q.row<const float>(b, i, h), L, dk, dv, dvp, s, w,
               a.out.row<float>(b, i, h));
    }
    if (a.memory_out.present()) {  // the final packed memory over all valid keys
      add_upto(len);
      const float inv = len > 0 ? 1.0f / static_cast<float>(len) : 0.0f;
      for (int64_t l = 0; l < L; ++l) {
        float* dst = a.memory_out.row<float>(b, l, h);
        for (int64_t x = 0; x < dv; ++x) dst[x] = acc[l * dvp + x] * inv;
      }
    }
  });
}

// Gradients of LunaCausalForward (math in ref::luna_backward_ref). One task per (batch,
// kv head) owns its keys' dk, dv and, per query head, dq and dmemory rows. Forward sweep
// over rows (the running acc): dq, and per row the coefficients of
// dY_il / t = (pi_l / t) dout_i + (s dz_l / t) q_i. Reverse sweep over keys: R_l = sum of
// dY_il / t over the rows that see key j, then dv_j += a_jl R_l, da_jl = R_l . v_j, and the
// softplus chain to dk_j and dp_l. dmemory may be absent (not written then).
// Per worker of the causal backward (Carve layout): acc and R [L][dvp]; v, dout, q rows
// [dvp]; w [L]; per row coefficients [Sq][2L].
struct BackwardScratch {
  float *acc, *r_sum, *vb, *db, *qb, *w, *coef;
  BackwardScratch(Carve& c, int64_t L, int64_t dvp, int64_t Sq)
      : acc(c.take(L * dvp)),
        r_sum(c.take(L * dvp)),
        vb(c.take(dvp)),
        db(c.take(dvp)),
        qb(c.take(dvp)),
        w(c.take(L)),
        coef(c.take(2 * Sq * L)) {}
};

// One (batch b, kv head hk) task of the causal backward: per query head, a forward sweep
// (dq, and each row's coefficients) and a reverse sweep over keys (dk, dv, dmemory).
struct LunaBackwardTask {
  const BackwardArgs& g;
  const AttentionArgs& a;
  const Problem& pr;
  const BackwardScratch& w;
  const int64_t b, hk, L, dvp, len;
  const float s;

  const float* mem(int64_t h, int64_t l) const { return a.memory.row<const float>(b, l, h); }

  // Row i of head h, which sees t keys (already in acc): dq and its coefficients.
  void ForwardRow(int64_t h, int64_t i, int64_t t) const {
    const int64_t dk = pr.Dk, dv = pr.Dv;
    float* dq = g.dq.row<float>(b, i, h);
    std::fill_n(dq, dk, 0.0f);
    float* ci = w.coef + i * 2 * L;
    if (t == 0) {
      std::fill(ci, ci + 2 * L, 0.0f);
      return;
    }
    const float inv_t = 1.0f / static_cast<float>(t);
    const float* q = a.q.row<const float>(b, i, h);
    CopyPadded(g.dout.row<const float>(b, i, h), dv, w.db, dvp);
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t l = 0; l < L; ++l)
      m = std::max(m, w.w[l] = s * inv_t * Dot(q, w.acc + l * dvp, dk));
    float sum = 0.0f;
    for (int64_t l = 0; l < L; ++l) sum += (w.w[l] = std::exp(w.w[l] - m));
    float dout_o = 0.0f;  // dout . out = sum_l pi_l dout . Y_l
    for (int64_t l = 0; l < L; ++l) {
      w.w[l] /= sum;
      ci[l] = inv_t * Dot(w.db, w.acc + l * dvp, dvp);  // dout . Y_l, for now
      dout_o += w.w[l] * ci[l];
    }
    for (int64_t l = 0; l < L; ++l) {
      const float dz = w.w[l] * (ci[l] - dout_o);
      const float* al = w.acc + l * dvp;
      const float c = s * dz * inv_t;  // dq += s dz Y_l
      for (int64_t x = 0; x < dk; ++x) dq[x] += c * al[x];
      ci[l] = w.w[l] * inv_t;      // coefficient of dout_i in dY_il / t
      ci[L + l] = s * dz * inv_t;  // coefficient of q_i
    }
  }

  void ForwardSweep(int64_t h) const {
    std::fill(w.acc, w.acc + L * dvp, 0.0f);
    int64_t added = 0;
    for (int64_t i = 0; i < pr.Sq; ++i) {
      const int64_t t = pr.keys(b, i).end;
      for (; added < t; ++added) {
        std::copy_n(a.v.row<const float>(b, added, hk), pr.Dv, w.vb);
        AddKey(w.acc, a.k.row<const float>(b, added, hk), w.vb, L, pr.Dk, dvp, s,
               [&](int64_t l) { return mem(h, l); });
      }
      ForwardRow(h, i, t);
    }
  }

  // Reverse sweep over the valid keys: rows join R while they see the key.
  void ReverseSweep(int64_t h) const {
    const int64_t dk = pr.Dk, dv = pr.Dv;
    const bool with_dmem = g.dmemory.present();
    std::fill(w.r_sum, w.r_sum + L * dvp, 0.0f);
    int64_t row = pr.Sq - 1;
    for (int64_t j = len - 1; j >= 0; --j) {
      for (; row >= 0 && pr.keys(b, row).end > j; --row) {
        const float* ci = w.coef + row * 2 * L;
        CopyPadded(g.dout.row<const float>(b, row, h), dv, w.db, dvp);
        CopyPadded(a.q.row<const float>(b, row, h), dk, w.qb, dvp);
        for (int64_t l = 0; l < L; ++l) {
          Axpy(ci[l], w.db, w.r_sum + l * dvp, dvp);
          Axpy(ci[L + l], w.qb, w.r_sum + l * dvp, dvp);
        }
      }
      const float* k = a.k.row<const float>(b, j, hk);
      CopyPadded(a.v.row<const float>(b, j, hk), dv, w.vb, dvp);
      float* dkj = g.dk.row<float>(b, j, hk);
      float* dvj = g.dv.row<float>(b, j, hk);
      for (int64_t l = 0; l < L; ++l) {
        const float* rl = w.r_sum + l * dvp;
        const float u = s * Dot(k, mem(h, l), dk);
        const float aj = SoftplusLn2(u);
        for (int64_t x = 0; x < dv; ++x) dvj[x] += aj * rl[x];
        const float gu = s * Dot(rl, w.vb, dvp) / (1.0f + std::exp2(-u));  // * sigmoid(u ln 2)
        const float* p = mem(h, l);
        for (int64_t x = 0; x < dk; ++x) dkj[x] += gu * p[x];
        if (with_dmem) {
          float* dp = g.dmemory.row<float>(b, l, h);
          for (int64_t x = 0; x < dk; ++x) dp[x] += gu * k[x];
        }
      }
    }
  }

  void Run() const {
    for (float* row : {w.vb, w.db, w.qb}) std::fill(row, row + dvp, 0.0f);
    zero_key_gradients(g, b, hk);
    for (int64_t h = hk * pr.group; h < (hk + 1) * pr.group; ++h) {
      if (g.dmemory.present()) {
        for (int64_t l = 0; l < L; ++l) std::fill_n(g.dmemory.row<float>(b, l, h), pr.Dk, 0.0f);
      }
      ForwardSweep(h);
      ReverseSweep(h);
    }
  }
};

// Gradients of the causal running-average form; dmemory may be absent (not written then).
void LunaCausalBackward(const BackwardArgs& g, const Problem& pr, Context& ctx) {
  const int64_t dvp = pad_to_state(pr.Dv), L = g.forward.memory.shape[1];
  ctx.reserve_scratch(Carve::floats<BackwardScratch>(L, dvp, pr.Sq));
  ctx.parallel_for(pr.B * pr.Hk, [&](int64_t task, int worker) {
    const int64_t b = task / pr.Hk, hk = task % pr.Hk;
    Carve carve(ctx.scratch(worker));
    const BackwardScratch w(carve, L, dvp, pr.Sq);
    const LunaBackwardTask t{
        g, g.forward, pr, w, b, hk, L, dvp, pr.key_length(b), static_cast<float>(pr.scale)};
    t.Run();
  });
}

void LunaAppend(LinearState& st, const ConstTensorView& k, const ConstTensorView& v,
                const ConstTensorView& memory, float s, Context& ctx) {
  const int64_t T = k.shape[1], Hk = k.shape[2], dk = k.shape[3], Hq = st.kv_heads,
                L = memory.shape[1];
  ctx.reserve_scratch(static_cast<size_t>(st.dvp));
  ctx.parallel_for(
      st.batch * Hq,
      [&](int64_t slot, int worker) {
        const int64_t b = slot / Hq, h = slot % Hq, hk = h / (Hq / Hk);
        float* vb = ctx.scratch(worker);
        std::fill(vb, vb + st.dvp, 0.0f);
        auto mem = [&](int64_t l) { return memory.row<const float>(b, l, h); };
        for (int64_t t = 0; t < T; ++t) {
          std::copy_n(v.row<const float>(b, t, hk), st.dv, vb);
          AddKey(st.c_slot(slot), k.row<const float>(b, t, hk), vb, L, dk, st.dvp, s, mem);
        }
      },
      4.0 * st.batch * Hq * T * L * (dk + st.dvp));
}

void LunaQuery(LinearState& st, const ConstTensorView& q, const TensorView& out,
               const ConstTensorView& memory, float s, Context& ctx) {
  const int64_t T = q.shape[1], Hq = q.shape[2], dk = q.shape[3], L = memory.shape[1];
  ctx.reserve_scratch(static_cast<size_t>(L));  // QueryRow's weights [L]
  ctx.parallel_for(
      st.batch * Hq,
      [&](int64_t slot, int worker) {
        const int64_t b = slot / Hq, h = slot % Hq;
        for (int64_t t = 0; t < T; ++t) {
          QueryRow(st.c_slot(slot), st.tokens, q.row<const float>(b, t, h), L, dk, st.dv, st.dvp, s,
                   ctx.scratch(worker), out.row<float>(b, t, h));
        }
      },
      4.0 * st.batch * Hq * T * L * (dk + st.dvp));
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(LunaCausalForward);
HWY_EXPORT(LunaCausalBackward);
HWY_EXPORT(LunaAppend);
HWY_EXPORT(LunaQuery);

void luna_causal_forward(const AttentionArgs& a, const Problem& p, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LunaCausalForward)(a, p, ctx);
}
void luna_causal_backward(const BackwardArgs& g, const Problem& p, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LunaCausalBackward)(g, p, ctx);
}
void luna_append(LinearState& s, const ConstTensorView& k, const ConstTensorView& v,
                 const ConstTensorView& memory, float scale, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LunaAppend)(s, k, v, memory, scale, ctx);
  s.tokens += k.shape[1];
}
void luna_query(LinearState& s, const ConstTensorView& q, const TensorView& out,
                const ConstTensorView& memory, float scale, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LunaQuery)(s, q, out, memory, scale, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
