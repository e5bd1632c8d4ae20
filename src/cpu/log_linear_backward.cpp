// Backward of the log-feature linear kernel (heinsen, rfa / performer); math in
// ref::lse_logits_backward_ref. With e_ijr = exp(lq_ir + lk_jr), Z_i = sum_jr e_ijr and
// delta_i = -dout_i . out_i:
//   dlq_ir = sum_j e_ijr (dout_i . v_j + delta_i) / Z_i
//   dlk_jr = sum_i e_ijr (dout_i . v_j + delta_i) / Z_i,   dv_j = sum_i sum_r e_ijr dout_i / Z_i.
// Forward sweep over rows (the forward's slot with running per-feature maxima m): w_ir =
// exp(lq_ir + m_r - c_i) / den_i gives dlq_ir = w_ir (c_r . dout_i + z_r delta_i). Reverse sweep
// over keys: dc_r = sum_i w_ir exp(mu_r - m_ir) dout_i and dz_r likewise with delta_i over the
// rows that see the key, mu_r = min of their maxima (rows join in falling order, so mu only
// falls: a rescale of dc by exp(m_new - mu) <= 1); then dlk_jr = exp(lk_jr - mu_r)
// (dc_r . v_j + dz_r) with lk_jr <= mu_r. Every exp argument is <= 0.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/log_linear_backward.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <algorithm>
#include <cmath>

#include "src/cpu/arena.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/log_features-inl.h"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
// Internal linkage: each target's helpers (Plan, Buffers, ...) stay in this file (the
// HWY_EXPORT tables below name the entry points through the enclosing namespace).
namespace {

// dx[0:dk) += d(log-features)/dx^T dlf: identity (heinsen), or for random features
// lf_r = s w_r.x - s^2 |x|^2 / 2 (keys; queries drop the norm, whose gradient is zero there
// since sum_r dlq_r = 0): dx = s sum_r dlf_r w_r - s^2 x sum_r dlf_r.
HWY_INLINE void ChainLogFeatures(const float* x, const float* dlf, int64_t dk, const LogFeatures& f,
                                 const float* omega, bool with_norm, float* dx) {
  if (omega == nullptr) {
    for (int64_t d = 0; d < dk; ++d) dx[d] += dlf[d];
    return;
  }
  // Scalar loops: omega rows and dx are dk long, not padded to whole vectors.
  const float s = f.sqrt_scale;
  float total = 0.0f;
  for (int64_t r = 0; r < f.features; ++r) {
    const float c = s * dlf[r];
    const float* w = omega + r * dk;
    if (c != 0.0f) {
      for (int64_t d = 0; d < dk; ++d) dx[d] += c * w[d];
    }
    total += dlf[r];
  }
  if (with_norm) {
    for (int64_t d = 0; d < dk; ++d) dx[d] -= s * s * total * x[d];
  }
}

// Per worker (Carve layout): the slot c [Fp][Dvp], z, m [Fp] and its adjoint dc, dz, mu;
// lf, dlf, e [Fp]; v, dout rows [Dvp]; tmp (AddKey's 2 Fp, or a [Dvp] row); per row
// w [Sq][Fp], m [Sq][Fp], delta [Sq].
struct Scratch {
  float *c, *z, *m, *dc, *dz, *mu, *lf, *dlf, *e, *vb, *db, *tmp, *wrows, *mrows, *delta;
  Scratch(Carve& k, int64_t Fp, int64_t Dvp, int64_t Sq)
      : c(k.take(Fp * Dvp)),
        z(k.take(Fp)),
        m(k.take(Fp)),
        dc(k.take(Fp * Dvp)),
        dz(k.take(Fp)),
        mu(k.take(Fp)),
        lf(k.take(Fp)),
        dlf(k.take(Fp)),
        e(k.take(Fp)),
        vb(k.take(Dvp)),
        db(k.take(Dvp)),
        tmp(k.take(std::max(2 * Fp, Dvp))),
        wrows(k.take(Sq * Fp)),
        mrows(k.take(Sq * Fp)),
        delta(k.take(Sq)) {}
};

// One (batch b, kv head hk) task: per query head of the group, a forward sweep over query
// rows (dq; w, m, delta per row) and a reverse sweep over keys (dk, dv).
struct LogLinearBackwardTask {
  const BackwardArgs& g;
  const AttentionArgs& a;
  const Problem& pr;
  const LogFeatures& f;
  const Scratch& w;
  const float* omega;  // this kv head's projections (null: heinsen)
  const int64_t b, hk, F, Fp, Dvp, len;

  // Forward sweep of head h: the slot takes each key as the rows come to see it.
  void ForwardSweep(int64_t h) const {
    const int64_t Sq = pr.Sq, Dk = pr.Dk, Dv = pr.Dv;
    const Slot st{w.c, w.z, w.m};
    std::fill(st.c, st.c + Fp * Dvp, 0.0f);
    std::fill(st.z, st.z + Fp, 0.0f);
    std::fill(st.m, st.m + Fp, kNegInf);
    int64_t added = 0;
    for (int64_t i = 0; i < Sq; ++i) {
      const int64_t vis = pr.keys(b, i).end;
      for (; added < vis; ++added) {
        ComputeLogFeatures(a.k.row<const float>(b, added, hk), Dk, f, omega, Fp, true, w.lf);
        CopyPadded(a.v.row<const float>(b, added, hk), Dv, w.vb, Dvp);
        AddKey(st, w.lf, w.vb, Fp, Dvp, w.tmp);
      }
      const float* q = a.q.row<const float>(b, i, h);
      float* dq = g.dq.row<float>(b, i, h);
      std::fill_n(dq, Dk, 0.0f);
      float* wr = w.wrows + i * Fp;
      std::copy(st.m, st.m + Fp, w.mrows + i * Fp);
      if (vis == 0) {
        std::fill(wr, wr + Fp, 0.0f);
        w.delta[i] = 0.0f;
        continue;
      }
      ComputeLogFeatures(q, Dk, f, omega, Fp, false, w.lf);
      float c = kNegInf;
      for (int64_t r = 0; r < F; ++r) c = std::max(c, w.lf[r] + st.m[r]);
      for (int64_t r = 0; r < Fp; ++r) wr[r] = r < F ? std::exp(w.lf[r] + st.m[r] - c) : 0.0f;
      MatMulRows<1>(wr, Fp, st.c, Dvp, Fp, Dvp, w.tmp, Dvp, /*accumulate=*/false);  // num
      const float den = Dot(wr, st.z, Fp);
      const float inv = den > 0.0f ? 1.0f / den : 0.0f;
      CopyPadded(g.dout.row<const float>(b, i, h), Dv, w.db, Dvp);
      w.delta[i] = -Dot(w.db, w.tmp, Dvp) * inv;  // -dout . out
      for (int64_t r = 0; r < Fp; ++r) {
        wr[r] *= inv;
        w.dlf[r] =
            wr[r] == 0.0f ? 0.0f : wr[r] * (Dot(st.c + r * Dvp, w.db, Dvp) + st.z[r] * w.delta[i]);
      }
      ChainLogFeatures(q, w.dlf, Dk, f, omega, false, dq);
    }
  }

  // Row `row` of head h joins the adjoint (dc, dz against the running minimum mu).
  void JoinRow(int64_t h, int64_t row) const {
    const float* wr = w.wrows + row * Fp;
    const float* m = w.mrows + row * Fp;
    CopyPadded(g.dout.row<const float>(b, row, h), pr.Dv, w.db, Dvp);
    for (int64_t r = 0; r < F; ++r) {
      if (m[r] < w.mu[r]) {
        if (w.mu[r] != std::numeric_limits<float>::infinity()) {
          const float sc = std::exp(m[r] - w.mu[r]);
          Scale(sc, w.dc + r * Dvp, Dvp);
          w.dz[r] *= sc;
        }
        w.mu[r] = m[r];
      }
      if (wr[r] != 0.0f) {
        Axpy(wr[r], w.db, w.dc + r * Dvp, Dvp);
        w.dz[r] += wr[r] * w.delta[row];
      }
    }
  }

  // Reverse sweep of head h over the valid keys; rows join while they see the key.
  void ReverseSweep(int64_t h) const {
    const int64_t Dk = pr.Dk, Dv = pr.Dv;
    std::fill(w.dc, w.dc + Fp * Dvp, 0.0f);
    std::fill(w.dz, w.dz + Fp, 0.0f);
    std::fill(w.mu, w.mu + Fp, std::numeric_limits<float>::infinity());
    int64_t row = pr.Sq - 1;
    for (int64_t j = len - 1; j >= 0; --j) {
      for (; row >= 0 && pr.keys(b, row).end > j; --row) JoinRow(h, row);
      const float* k = a.k.row<const float>(b, j, hk);
      ComputeLogFeatures(k, Dk, f, omega, Fp, true, w.lf);
      CopyPadded(a.v.row<const float>(b, j, hk), Dv, w.vb, Dvp);
      for (int64_t r = 0; r < Fp; ++r) {
        w.e[r] = r < F && w.mu[r] != std::numeric_limits<float>::infinity()
                     ? std::exp(w.lf[r] - w.mu[r])
                     : 0.0f;
        w.dlf[r] = w.e[r] == 0.0f ? 0.0f : w.e[r] * (Dot(w.dc + r * Dvp, w.vb, Dvp) + w.dz[r]);
      }
      ChainLogFeatures(k, w.dlf, Dk, f, omega, true, g.dk.row<float>(b, j, hk));
      MatMulRows<1>(w.e, Fp, w.dc, Dvp, Fp, Dvp, w.tmp, Dvp, /*accumulate=*/false);  // dc^T e
      float* dv = g.dv.row<float>(b, j, hk);
      for (int64_t x = 0; x < Dv; ++x) dv[x] += w.tmp[x];
    }
  }

  void Run() const {
    std::fill(w.vb, w.vb + Dvp, 0.0f);
    std::fill(w.db, w.db + Dvp, 0.0f);
    zero_key_gradients(g, b, hk);
    for (int64_t h = hk * pr.group; h < (hk + 1) * pr.group; ++h) {
      ForwardSweep(h);
      ReverseSweep(h);
    }
  }
};

void LogLinearBackward(const BackwardArgs& g, const Problem& pr, const LogFeatures& f,
                       Context& ctx) {
  const int64_t F = f.omega ? f.features : pr.Dk, Fp = pad_to_state(F), Dvp = pad_to_state(pr.Dv);
  ctx.reserve_scratch(Carve::floats<Scratch>(Fp, Dvp, pr.Sq));
  ctx.parallel_for(pr.B * pr.Hk, [&](int64_t task, int worker) {
    const int64_t b = task / pr.Hk, hk = task % pr.Hk;
    Carve carve(ctx.scratch(worker));
    const Scratch w(carve, Fp, Dvp, pr.Sq);
    const float* omega = f.omega ? f.omega + hk * f.features * pr.Dk : nullptr;
    const LogLinearBackwardTask t{g, g.forward, pr, f,  w,   omega,
                                  b, hk,        F,  Fp, Dvp, pr.key_length(b)};
    t.Run();
  });
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(LogLinearBackward);

void log_linear_backward(const BackwardArgs& g, const Problem& p, const LogFeatures& f,
                         Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LogLinearBackward)(g, p, f, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
