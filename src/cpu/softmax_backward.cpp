// Exact softmax attention backward, float32, deterministic:
//   pass 1, one task per (batch, q head, 32 query rows): recompute the row's probabilities
//     P_j, dP_j = dout . v_j, D = sum_j P_j dP_j, and dq = s sum_j P_j (dP_j - D) k_j;
//     keep lse and D per row;
//   pass 2, one task per (batch, kv head, 32 keys): for every query row of the group's heads
//     that sees the key, p = exp(s q.k - lse), dv += p dout, dk += s p (dout.v - D) q.
// Every gradient row is owned by one task, so the result does not depend on the thread
// count. This first version works row by row on dot products (no tiles yet).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/softmax_backward.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <algorithm>
#include <cmath>
#include <limits>

#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {

constexpr int64_t kRows = 32;

void SoftmaxBackward(const BackwardArgs& g, float scale, bool causal, Context& ctx) {
  const AttentionArgs& a = g.forward;
  const int64_t B = a.q.shape[0], Sq = a.q.shape[1], Hq = a.q.shape[2], Dk = a.q.shape[3];
  const int64_t Sk = a.k.shape[1], Hk = a.k.shape[2], Dv = a.v.shape[3];
  const int64_t Dkp = pad_to_state(Dk), Dvp = pad_to_state(Dv);
  // Per row: lse and D (pass 1 -> pass 2).
  float* stats = ctx.shared_scratch(static_cast<size_t>(2 * B * Hq * Sq));
  auto lse = [&](int64_t b, int64_t h, int64_t i) -> float& {
    return stats[((b * Hq + h) * Sq + i) * 2];
  };
  auto dsum = [&](int64_t b, int64_t h, int64_t i) -> float& {
    return stats[((b * Hq + h) * Sq + i) * 2 + 1];
  };
  auto length = [&](int64_t b) { return a.key_lengths.empty() ? Sk : a.key_lengths[b]; };
  ctx.reserve_scratch(static_cast<size_t>(2 * Sk + Dkp + Dvp + 64));
  const int64_t qblocks = (Sq + kRows - 1) / kRows;
  ctx.parallel_for(B * Hq * qblocks, [&](int64_t task, int worker) {
    const int64_t blk = task % qblocks, bh = task / qblocks, b = bh / Hq, h = bh % Hq;
    const int64_t hk = h / (Hq / Hk), len = length(b);
    float* p = ctx.scratch(worker);
    float* dp = p + Sk;
    float* dq = dp + Sk;
    for (int64_t i = blk * kRows; i < std::min(Sq, (blk + 1) * kRows); ++i) {
      const int64_t nk = visible_keys(causal, Sq, Sk, len, i);
      const float* q = a.q.row<const float>(b, i, h);
      const float* dout = g.dout.row<const float>(b, i, h);
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < nk; ++j) {
        m = std::max(m, p[j] = scale * Dot(q, a.k.row<const float>(b, j, hk), Dk));
        dp[j] = Dot(dout, a.v.row<const float>(b, j, hk), Dv);
      }
      float sum = 0;
      for (int64_t j = 0; j < nk; ++j) sum += (p[j] = std::exp(p[j] - m));
      float d = 0;
      for (int64_t j = 0; j < nk; ++j) d += (p[j] /= sum) * dp[j];
      std::fill(dq, dq + Dkp, 0.0f);
      for (int64_t j = 0; j < nk; ++j) {
        const float* k = a.k.row<const float>(b, j, hk);
        const float ds = scale * p[j] * (dp[j] - d);
        for (int64_t x = 0; x < Dk; ++x) dq[x] += ds * k[x];
      }
      std::copy_n(dq, Dk, g.dq.row<float>(b, i, h));
      lse(b, h, i) = nk > 0 ? m + std::log(sum) : std::numeric_limits<float>::infinity();
      dsum(b, h, i) = d;
    }
  });
  const int64_t kblocks = (Sk + kRows - 1) / kRows;
  ctx.reserve_scratch(static_cast<size_t>(kRows * (Dkp + Dvp) + 64));
  ctx.parallel_for(B * Hk * kblocks, [&](int64_t task, int worker) {
    const int64_t blk = task % kblocks, bh = task / kblocks, b = bh / Hk, hk = bh % Hk;
    const int64_t group = Hq / Hk, len = length(b);
    const int64_t j0 = blk * kRows, j1 = std::min(Sk, j0 + kRows);
    // dk, dv of the block's keys; every query row is read once per block.
    float* dk = ctx.scratch(worker);
    float* dv = dk + kRows * Dkp;
    std::fill(dk, dk + kRows * (Dkp + Dvp), 0.0f);
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t nk = std::min(j1, visible_keys(causal, Sq, Sk, len, i));
        if (nk <= j0) continue;
        const float* q = a.q.row<const float>(b, i, h);
        const float* dout = g.dout.row<const float>(b, i, h);
        const float l = lse(b, h, i), d = dsum(b, h, i);
        for (int64_t j = j0; j < nk; ++j) {
          const float pj = std::exp(scale * Dot(q, a.k.row<const float>(b, j, hk), Dk) - l);
          const float ds = scale * pj * (Dot(dout, a.v.row<const float>(b, j, hk), Dv) - d);
          float* dvj = dv + (j - j0) * Dvp;
          float* dkj = dk + (j - j0) * Dkp;
          for (int64_t x = 0; x < Dv; ++x) dvj[x] += pj * dout[x];
          for (int64_t x = 0; x < Dk; ++x) dkj[x] += ds * q[x];
        }
      }
    }
    for (int64_t j = j0; j < j1; ++j) {
      std::copy_n(dk + (j - j0) * Dkp, Dk, g.dk.row<float>(b, j, hk));
      std::copy_n(dv + (j - j0) * Dvp, Dv, g.dv.row<float>(b, j, hk));
    }
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(SoftmaxBackward);

void softmax_backward(const BackwardArgs& g, float scale, bool causal, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(SoftmaxBackward)(g, scale, causal, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
