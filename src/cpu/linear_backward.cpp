// Backward of de Brebisson & Vincent linear attention (see ref::linear_backward_ref for the
// math). Per (batch, kv head), for each of its query heads:
//   forward sweep over rows i: the state C = sum_j w_j phi(k_j) v_j^T, z = sum_j w_j phi(k_j)
//     over the row's visible keys gives num, den, the normaliser f, dnum = f dout,
//     dden = -(dout . num) / den^2 (kernel norm), dq = (C dnum + z dden) * phi'(q);
//   reverse sweep over keys j: dC = sum_{rows seeing j} phi(q_i) dnum_i^T, dz likewise with
//     dden; then dphi(k_j) = w_j (dC v_j + dz), dv_j += w_j dC^T phi(k_j),
//     dw_j = phi(k_j) . (dC v_j + dz).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/linear_backward.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <algorithm>
#include <cmath>

#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/features-inl.h"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {

inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

void LinearBackward(const BackwardArgs& g, const LinearConfig& cfg, bool causal, Context& ctx) {
  const AttentionArgs& a = g.forward;
  const int64_t B = a.q.shape[0], Sq = a.q.shape[1], Hq = a.q.shape[2], Dk = a.q.shape[3];
  const int64_t Sk = a.k.shape[1], Hk = a.k.shape[2], Dv = a.v.shape[3];
  const int64_t Dkp = pad_to_state(Dk), Dvp = pad_to_state(Dv), group = Hq / Hk;
  const FeatureMap map = cfg.feature_map;
  // Scratch: C, dC [Dkp][Dvp]; z, dz, phi row [Dkp]; v row [Dvp]; t [max(Dkp, Dvp)]; grad
  // [Dkp]; per query row phi(q) [Sq][Dkp], dnum [Sq][Dvp], dden [Sq].
  ctx.reserve_scratch(static_cast<size_t>(2 * Dkp * Dvp + 4 * Dkp + Dvp + std::max(Dkp, Dvp) +
                                          Sq * (Dkp + Dvp + 1) + 64));
  ctx.parallel_for(B * Hk, [&](int64_t task, int worker) {
    const int64_t b = task / Hk, hk = task % Hk;
    const int64_t len = a.key_lengths.empty() ? Sk : a.key_lengths[b];
    float* c = ctx.scratch(worker);
    float* dc = c + Dkp * Dvp;
    float* z = dc + Dkp * Dvp;
    float* dz = z + Dkp;
    float* fk = dz + Dkp;
    float* vb = fk + Dkp;
    float* t = vb + Dvp;  // [max(Dkp, Dvp)], zero padded
    float* grad = t + std::max(Dkp, Dvp);
    float* fq = grad + Dkp;
    float* dnum = fq + Sq * Dkp;
    float* dden = dnum + Sq * Dvp;
    std::fill(t, t + std::max(Dkp, Dvp), 0.0f);
    auto weight = [&](int64_t j) {
      return cfg.gated ? std::pow(Sigmoid(a.gate.at<const float>(b, j, hk)), 2.0f) : 1.0f;
    };
    auto load_key = [&](int64_t j) {
      FeatureRow(a.k.row<const float>(b, j, hk), Dk, Dkp, map, fk);
      CopyPadded(a.v.row<const float>(b, j, hk), Dv, vb, Dvp);
    };
    for (int64_t j = 0; j < Sk; ++j) {
      std::fill_n(g.dk.row<float>(b, j, hk), Dk, 0.0f);
      std::fill_n(g.dv.row<float>(b, j, hk), Dv, 0.0f);
      if (cfg.gated) g.dgate.at<float>(b, j, hk) = 0.0f;
    }
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      // Forward sweep.
      std::fill(c, c + Dkp * Dvp, 0.0f);
      std::fill(z, z + Dkp, 0.0f);
      int64_t added = 0;
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t vis = visible_keys(causal, Sq, Sk, len, i);
        for (; added < vis; ++added) {
          load_key(added);
          const float w = weight(added);
          for (int64_t r = 0; r < Dk; ++r) {
            if (fk[r] != 0.0f) Axpy(w * fk[r], vb, c + r * Dvp, Dvp);
            z[r] += w * fk[r];
          }
        }
        const float* q = a.q.row<const float>(b, i, h);
        const float* dout = g.dout.row<const float>(b, i, h);
        float* fqi = fq + i * Dkp;
        FeatureRow(q, Dk, Dkp, map, fqi);
        float* dn = dnum + i * Dvp;
        float* dq = g.dq.row<float>(b, i, h);
        if (vis == 0) {
          std::fill(dn, dn + Dvp, 0.0f);
          dden[i] = 0.0f;
          std::fill_n(dq, Dk, 0.0f);
          continue;
        }
        MatMulRows<1>(fqi, Dkp, c, Dvp, Dk, Dvp, t, Dvp, /*accumulate=*/false);  // num
        const float den = Dot(fqi, z, Dkp);
        float f = 1.0f, dd = 0.0f;
        switch (cfg.norm) {
          case LinearNorm::kNone:
            break;
          case LinearNorm::kLength:
            f = 1.0f / static_cast<float>(vis);
            break;
          case LinearNorm::kFixed1000:
            f = 1000.0f / static_cast<float>(vis);
            break;
          case LinearNorm::kKernel:
            f = den > 0.0f ? 1.0f / den : 0.0f;
            dd = den > 0.0f ? -Dot(dout, t, Dv) / (den * den) : 0.0f;
            break;
        }
        for (int64_t x = 0; x < Dv; ++x) dn[x] = f * dout[x];
        std::fill(dn + Dv, dn + Dvp, 0.0f);
        dden[i] = dd;
        for (int64_t r = 0; r < Dk; ++r) t[r] = Dot(c + r * Dvp, dn, Dvp) + z[r] * dd;  // dphi(q)
        FeatureGradRow(q, t, Dk, Dkp, map, grad);
        std::copy_n(grad, Dk, dq);
      }
      // Reverse sweep over the valid keys; rows are added while they see the key.
      std::fill(dc, dc + Dkp * Dvp, 0.0f);
      std::fill(dz, dz + Dkp, 0.0f);
      int64_t row = Sq - 1;
      for (int64_t j = len - 1; j >= 0; --j) {
        for (; row >= 0 && visible_keys(causal, Sq, Sk, len, row) > j; --row) {
          const float* fqi = fq + row * Dkp;
          for (int64_t r = 0; r < Dk; ++r) {
            if (fqi[r] != 0.0f) Axpy(fqi[r], dnum + row * Dvp, dc + r * Dvp, Dvp);
            dz[r] += fqi[r] * dden[row];
          }
        }
        load_key(j);
        const float w = weight(j);
        const float* k = a.k.row<const float>(b, j, hk);
        float* dk = g.dk.row<float>(b, j, hk);
        float dw = 0.0f;
        for (int64_t r = 0; r < Dk; ++r) {
          const float u = Dot(dc + r * Dvp, vb, Dvp) + dz[r];  // (dC v_j + dz)_r
          dw += fk[r] * u;
          t[r] = w * u;  // dphi(k_j)
        }
        FeatureGradRow(k, t, Dk, Dkp, map, grad);
        for (int64_t r = 0; r < Dk; ++r) dk[r] += grad[r];
        MatMulRows<1>(fk, Dkp, dc, Dvp, Dk, Dvp, t, Dvp, /*accumulate=*/false);  // dC^T phi(k_j)
        float* dv = g.dv.row<float>(b, j, hk);
        for (int64_t x = 0; x < Dv; ++x) dv[x] += w * t[x];
        if (cfg.gated) {
          const float s = Sigmoid(a.gate.at<const float>(b, j, hk));
          g.dgate.at<float>(b, j, hk) += dw * 2.0f * s * s * (1.0f - s);
        }
      }
    }
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(LinearBackward);

void linear_backward(const BackwardArgs& g, const LinearConfig& c, bool causal, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LinearBackward)(g, c, causal, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
