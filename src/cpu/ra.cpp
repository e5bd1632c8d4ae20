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

constexpr int64_t kRows = 32;

// x[0:cols) <- softmax over [r.begin, r.end) of x + bias (bias may be null), zero elsewhere
// and everywhere when every visible logit is -inf. Returns whether any key is visible.
HWY_INLINE bool SoftmaxRange(float* HWY_RESTRICT x, int64_t cols, const KeyRange& r,
                             const float* HWY_RESTRICT bias) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = r.begin; j < r.end; ++j) {
    if (bias) x[j] += bias[j];
    m = std::max(m, x[j]);
  }
  std::fill(x, x + std::min(r.begin, cols), 0.0f);
  std::fill(x + std::max<int64_t>(r.end, 0), x + cols, 0.0f);
  if (m == -std::numeric_limits<float>::infinity()) {
    std::fill(x, x + cols, 0.0f);
    return false;
  }
  float sum = 0;
  for (int64_t j = r.begin; j < r.end; ++j) sum += (x[j] = std::exp(x[j] - m));
  for (int64_t j = r.begin; j < r.end; ++j) x[j] /= sum;
  return true;
}

// One kv head's packed keys (Carve layout, one per (batch, kv head) in the shared block):
// keys transposed [Dk][Skp], values [Skp][Dvp], s |k|^2 / 2 [Skp].
struct PackedHead {
  float *kt, *vp, *half_norm;
  PackedHead(Carve& c, int64_t Dk, int64_t Skp, int64_t Dvp)
      : kt(c.take(Dk * Skp)), vp(c.take(Skp * Dvp)), half_norm(c.take(Skp)) {}
};

// Packs every (batch, kv head) into shared (heads of per_head floats, zero padded).
void PackHeads(const AttentionArgs& a, const Problem& p, int64_t Skp, int64_t Dvp, float* shared,
               int64_t per_head, Context& ctx) {
  const float scale = static_cast<float>(p.scale);
  ctx.parallel_for(p.B * p.Hk, [&](int64_t bh, int) {
    const int64_t b = bh / p.Hk, hk = bh % p.Hk;
    std::fill(shared + bh * per_head, shared + (bh + 1) * per_head, 0.0f);
    Carve carve(shared + bh * per_head);
    const PackedHead ph(carve, p.Dk, Skp, Dvp);
    for (int64_t j = 0; j < p.Sk; ++j) {
      const float* k = a.k.row<const float>(b, j, hk);
      for (int64_t x = 0; x < p.Dk; ++x) ph.kt[x * Skp + j] = k[x];
      ph.half_norm[j] = 0.5f * scale * Dot(k, k, p.Dk);
      std::copy_n(a.v.row<const float>(b, j, hk), p.Dv, ph.vp + j * Dvp);
    }
  });
}

void RaForward(const AttentionArgs& a, const Problem& p, const RaConfig& cfg, Context& ctx) {
  const int64_t B = p.B, Sq = p.Sq, Hq = p.Hq, Dk = p.Dk, Sk = p.Sk, Hk = p.Hk, Dv = p.Dv;
  const float scale = static_cast<float>(p.scale);
  const int64_t Skp = pad_to_state(std::max<int64_t>(Sk, 1)), Dkp = pad_to_state(Dk),
                Dvp = pad_to_state(Dv);
  const float sqrt_s = std::sqrt(scale);
  const int64_t per_head = static_cast<int64_t>(Carve::floats<PackedHead>(Dk, Skp, Dvp));
  float* shared = ctx.shared_scratch(static_cast<size_t>(B * Hk * per_head));
  PackHeads(a, p, Skp, Dvp, shared, per_head, ctx);
  const int64_t blocks = hwy::DivCeil(Sq, kRows);
  const bool biased = p.biased();  // ALiBi, attn_mask: a bias row per query row
  // Per worker (Carve layout), for kRows query rows.
  struct Scratch {
    float* w;     // [rows][Dkp]: scaled queries, then samples
    float* pi;    // [rows][Skp]
    float* f;     // [rows][Skp]
    float* acc;   // [rows][Dvp]
    float* bias;  // [rows][Skp] when biased
    Scratch(Carve& c, int64_t dkp, int64_t skp, int64_t dvp, bool biased)
        : w(c.take(kRows * dkp)),
          pi(c.take(kRows * skp)),
          f(c.take(kRows * skp)),
          acc(c.take(kRows * dvp)),
          bias(c.take(biased ? kRows * skp : 0)) {}
  };
  ctx.reserve_scratch(Carve::floats<Scratch>(Dkp, Skp, Dvp, biased));
  const CounterRng rng(cfg.seed);
  ctx.parallel_for(B * Hq * blocks, [&](int64_t task, int worker) {
    const int64_t blk = task % blocks, bh = task / blocks, b = bh / Hq, h = bh % Hq,
                  hk = p.kv_head(h);
    const int64_t i0 = blk * kRows, rows = std::min(kRows, Sq - i0);
    Carve head(shared + (b * Hk + hk) * per_head);
    const PackedHead ph(head, Dk, Skp, Dvp);
    const float *kt = ph.kt, *vp = ph.vp, *half_norm = ph.half_norm;
    Carve carve(ctx.scratch(worker));
    const Scratch sc(carve, Dkp, Skp, Dvp, biased);
    float *w = sc.w, *pi = sc.pi, *f = sc.f, *acc = sc.acc, *bias = sc.bias;
    KeyRange range[kRows];
    bool live[kRows];
    for (int64_t r = 0; r < rows; ++r) {
      const float* q = a.q.row<const float>(b, i0 + r, h);
      for (int64_t x = 0; x < Dk; ++x) w[r * Dkp + x] = scale * q[x];
      range[r] = p.keys(b, i0 + r);
      if (biased && !range[r].empty()) {
        float* br = bias + r * Skp;
        std::fill(br + range[r].begin, br + range[r].end, 0.0f);
        p.bias_row(b, h, i0 + r, range[r].begin, br + range[r].begin, range[r].size());
      }
    }
    const float* no_bias = nullptr;
    auto bias_of = [&](int64_t r) { return biased ? bias + r * Skp : no_bias; };
    MatMul(w, Dkp, kt, Skp, pi, Skp, rows, Skp, Dk, /*accumulate=*/false);
    for (int64_t r = 0; r < rows; ++r)
      live[r] = SoftmaxRange(pi + r * Skp, Skp, range[r], bias_of(r));
    std::fill(acc, acc + rows * Dvp, 0.0f);
    for (int t = 0; t < cfg.samples; ++t) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r, nk = range[r].size();
        if (!live[r]) continue;
        const uint64_t stream = CounterRng::stream(b, h, i);
        const double u = rng.uniform(stream, t);
        const float* pr = pi + r * Skp + range[r].begin;
        int64_t last = nk - 1, m = 0;  // as ra_ref: never past the last nonzero probability
        while (last > 0 && pr[last] == 0.0f) --last;
        for (double cdf = pr[0]; cdf < u && m < last; cdf += pr[++m]) {
        }
        m += range[r].begin;
        const float* q = a.q.row<const float>(b, i, h);
        const float* km = a.k.row<const float>(b, m, hk);
        for (int64_t x = 0; x < Dk; ++x) {
          w[r * Dkp + x] = sqrt_s * (q[x] + km[x]) +
                           static_cast<float>(rng.normal(
                               stream, (1ull << 40) + static_cast<uint64_t>(t) * Dk + x));
        }
      }
      MatMul(w, Dkp, kt, Skp, f, Skp, rows, Skp, Dk, /*accumulate=*/false);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < Skp; ++j) f[r * Skp + j] = sqrt_s * f[r * Skp + j] - half_norm[j];
        if (!live[r]) std::fill(f + r * Skp, f + (r + 1) * Skp, 0.0f);
        if (live[r]) SoftmaxRange(f + r * Skp, Skp, range[r], bias_of(r));
      }
      MatMul(f, Skp, vp, Dvp, acc, Dvp, rows, Dvp, std::max<int64_t>(range[rows - 1].end, 0),
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

void ra_forward(const AttentionArgs& a, const Problem& p, const RaConfig& c, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(RaForward)(a, p, c, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
