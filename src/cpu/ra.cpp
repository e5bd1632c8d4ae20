// Randomized Attention, the unbiased estimator (SPEC 2(a)), float32:
//   pi_i = softmax_j(s q_i . k_j) over visible keys; per sample t: m ~ pi_i,
//   w = sqrt(s) (q_i + k_m) + eps;  f(w) = softmax_j(sqrt(s) w . k_j - s |k_j|^2 / 2) V;
//   out_i = mean_t f(w).
// Keys are packed transposed once; a task takes 32 query rows: one matmul for pi, and per
// sample one for the f logits and one for the value mix. Draws follow ref::ra_ref exactly.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/ra.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <algorithm>
#include <cmath>

#include "attnkit/random.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/attend-inl.h"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
// Internal linkage: each target's helpers (Plan, Buffers, ...) stay in this file (the
// HWY_EXPORT tables below name the entry points through the enclosing namespace).
namespace {

constexpr int64_t kRows = 32;

void RaForward(const AttentionArgs& a, const RaConfig& cfg, float scale, bool causal,
               Context& ctx) {
  const int64_t B = a.q.shape[0], Sq = a.q.shape[1], Hq = a.q.shape[2], Dk = a.q.shape[3];
  const int64_t Sk = a.k.shape[1], Hk = a.k.shape[2], Dv = a.v.shape[3];
  const int64_t Skp = pad_to_state(std::max<int64_t>(Sk, 1)), Dkp = pad_to_state(Dk),
                Dvp = pad_to_state(Dv);
  const float sqrt_s = std::sqrt(scale);
  // Shared: per (b, hk) keys transposed [Dk][Skp], values [Skp][Dvp], s |k|^2 / 2 [Skp].
  const int64_t per_head = Dk * Skp + Skp * Dvp + Skp;
  float* shared = ctx.shared_scratch(static_cast<size_t>(B * Hk * per_head));
  ctx.parallel_for(B * Hk, [&](int64_t bh, int) {
    const int64_t b = bh / Hk, hk = bh % Hk;
    float* kt = shared + bh * per_head;
    float* vp = kt + Dk * Skp;
    float* half_norm = vp + Skp * Dvp;
    std::fill(kt, kt + per_head, 0.0f);
    for (int64_t j = 0; j < Sk; ++j) {
      const float* k = a.k.row<const float>(b, j, hk);
      for (int64_t x = 0; x < Dk; ++x) kt[x * Skp + j] = k[x];
      half_norm[j] = 0.5f * scale * Dot(k, k, Dk);
      std::copy_n(a.v.row<const float>(b, j, hk), Dv, vp + j * Dvp);
    }
  });
  const int64_t blocks = hwy::DivCeil(Sq, kRows);
  ctx.reserve_scratch(static_cast<size_t>(kRows * (Dkp + 2 * Skp + 2 * Dvp) + 64));
  const CounterRng rng(cfg.seed);
  ctx.parallel_for(B * Hq * blocks, [&](int64_t task, int worker) {
    const int64_t blk = task % blocks, bh = task / blocks, b = bh / Hq, h = bh % Hq,
                  hk = h / (Hq / Hk);
    const int64_t i0 = blk * kRows, rows = std::min(kRows, Sq - i0);
    const int64_t len = a.key_lengths.empty() ? Sk : a.key_lengths[b];
    const float* kt = shared + (b * Hk + hk) * per_head;
    const float* vp = kt + Dk * Skp;
    const float* half_norm = vp + Skp * Dvp;
    float* w = ctx.scratch(worker);  // [rows][Dkp]: scaled queries, then samples
    float* pi = w + kRows * Dkp;     // [rows][Skp]
    float* f = pi + kRows * Skp;     // [rows][Skp]
    float* mix = f + kRows * Skp;    // [rows][Dvp]
    float* acc = mix + kRows * Dvp;  // [rows][Dvp]
    auto visible = [&](int64_t r) { return visible_keys(causal, Sq, Sk, len, i0 + r); };
    for (int64_t r = 0; r < rows; ++r) {
      const float* q = a.q.row<const float>(b, i0 + r, h);
      for (int64_t x = 0; x < Dk; ++x) w[r * Dkp + x] = scale * q[x];
    }
    MatMul(w, Dkp, kt, Skp, pi, Skp, rows, Skp, Dk, /*accumulate=*/false);
    SoftmaxRows(pi, Skp, rows, Skp, visible);
    std::fill(acc, acc + rows * Dvp, 0.0f);
    for (int t = 0; t < cfg.samples; ++t) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r, nk = visible(r);
        if (nk == 0) continue;
        const uint64_t stream = CounterRng::stream(b, h, i);
        const double u = rng.uniform(stream, t);
        const float* p = pi + r * Skp;
        int64_t m = 0;
        for (double cdf = p[0]; cdf < u && m + 1 < nk; cdf += p[++m]) {
        }
        const float* q = a.q.row<const float>(b, i, h);
        const float* km = a.k.row<const float>(b, m, hk);
        for (int64_t x = 0; x < Dk; ++x) {
          w[r * Dkp + x] = sqrt_s * (q[x] + km[x]) +
                           static_cast<float>(rng.normal(
                               stream, (1ull << 40) + static_cast<uint64_t>(t) * Dk + x));
        }
      }
      MatMul(w, Dkp, kt, Skp, f, Skp, rows, Skp, Dk, /*accumulate=*/false);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < Skp; ++j) f[r * Skp + j] = sqrt_s * f[r * Skp + j] - half_norm[j];
      SoftmaxRows(f, Skp, rows, Skp, visible);
      MatMul(f, Skp, vp, Dvp, acc, Dvp, rows, Dvp, std::max<int64_t>(visible(rows - 1), 0),
             /*accumulate=*/true);
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = a.out.row<float>(b, i0 + r, h);
      for (int64_t x = 0; x < Dv; ++x) dst[x] = acc[r * Dvp + x] / static_cast<float>(cfg.samples);
    }
  });
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(RaForward);

void ra_forward(const AttentionArgs& a, const RaConfig& c, float scale, bool causal, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(RaForward)(a, c, scale, causal, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
