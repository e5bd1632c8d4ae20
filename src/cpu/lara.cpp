// LARA with 1-D segment-mean landmarks (SPEC 2(a), "LARA as implemented"), float32.
// Per (batch, q head), with C landmarks, l(x, w) = s w.x - s|x|^2/2:
//   qbar, kbar segment means; mu = qbar + kbar; w = mu (+ eps when sampling)
//   Lk = l(k_j, w_c) [C][len] -> F = softmax_j(Lk) V, lse_k = LSE_j Lk
//   log q_c and balance weights from l(mu_c', w_c); t = softmax over queries (mis-opt)
//   out_n = sum_c softmax_c(log alpha_nc + l(q_n, w_c) + lse_k_c - log q_c) F_c
// Every product over the sequence is a matmul on packed operands: O((Sq + Sk) C D).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/lara.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <algorithm>
#include <cmath>
#include <limits>

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

// Means of C contiguous segments of n rows (SPEC 2(a) step 1) into means [C][ld].
template <typename Row>
void SegmentMeans(const Row& row, int64_t n, int64_t C, int64_t dim, int64_t ld, float* means) {
  const int64_t base = n / C, num_short = (n % C == 0) ? C : (base + 1) * C - n;
  std::fill(means, means + C * ld, 0.0f);
  int64_t start = 0;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t size = c < num_short ? base : base + 1;
    float* m = means + c * ld;
    for (int64_t j = start; j < start + size; ++j) {
      const float* x = row(j);
      for (int64_t d = 0; d < dim; ++d) m[d] += x[d];
    }
    for (int64_t d = 0; d < dim; ++d) m[d] /= static_cast<float>(size);
    start += size;
  }
}

struct Sizes {
  int64_t L, Dk, Dkp, Dvp, Skp, Sqp, Lp;
  int64_t floats() const {
    return Dk * Skp + Skp * Dvp + Dk * Sqp + 2 * L * Sqp + L * Skp + 4 * L * Dkp + L * Dvp + Skp +
           Sqp + 6 * Lp + 64;
  }
};

void LaraForward(const AttentionArgs& a, const Problem& pr, const LaraConfig& cfg, Context& ctx) {
  const int64_t B = pr.B, Sq = pr.Sq, Hq = pr.Hq, Dk = pr.Dk, Sk = pr.Sk, Dv = pr.Dv;
  const float s = static_cast<float>(pr.scale);
  const int64_t L =
      std::max<int64_t>(1, std::min<int64_t>({cfg.landmarks, Sq, std::max<int64_t>(Sk, 1)}));
  const Sizes z{L,
                Dk,
                pad_to_state(Dk),
                pad_to_state(Dv),
                pad_to_state(std::max<int64_t>(Sk, 1)),
                pad_to_state(Sq),
                pad_to_state(L)};
  const CounterRng rng(cfg.seed);
  ctx.reserve_scratch(static_cast<size_t>(z.floats()));
  ctx.parallel_for(B * Hq, [&](int64_t task, int worker) {
    const int64_t b = task / Hq, h = task % Hq, hk = pr.kv_head(h);
    const int64_t len = pr.key_length(b);
    const int64_t C = std::min<int64_t>({cfg.landmarks, Sq, len});
    if (C == 0) {
      for (int64_t i = 0; i < Sq; ++i)
        std::fill(a.out.row<float>(b, i, h), a.out.row<float>(b, i, h) + Dv, 0.0f);
      return;
    }
    float* kt = ctx.scratch(worker);  // [Dk][Skp]
    float* vp = kt + Dk * z.Skp;      // [Skp][Dvp]
    float* qt = vp + z.Skp * z.Dvp;   // [Dk][Sqp]
    float* lq = qt + Dk * z.Sqp;      // [L][Sqp]  w_c . q_n, then t_nc or mu_c . q_n
    float* tq = lq + L * z.Sqp;       // [L][Sqp]
    float* lk = tq + L * z.Sqp;       // [L][Skp]
    float* qbar = lk + L * z.Skp;     // [L][Dkp]
    float* kbar = qbar + L * z.Dkp;
    float* mu = kbar + L * z.Dkp;
    float* omega = mu + L * z.Dkp;
    float* F = omega + L * z.Dkp;  // [L][Dvp]
    float* knorm = F + L * z.Dvp;  // [Skp]
    float* qnorm = knorm + z.Skp;  // [Sqp]
    float* lse_k = qnorm + z.Sqp;  // [Lp]
    float* log_q = lse_k + z.Lp;
    float* bh = log_q + z.Lp;
    float* logits = bh + z.Lp;
    float* tmp = logits + z.Lp;  // [2 Lp]
    auto qrow = [&](int64_t i) { return a.q.row<const float>(b, i, h); };
    auto krow = [&](int64_t j) { return a.k.row<const float>(b, j, hk); };
    // Packed operands.
    std::fill(kt, kt + Dk * z.Skp, 0.0f);
    std::fill(vp, vp + z.Skp * z.Dvp, 0.0f);
    for (int64_t j = 0; j < len; ++j) {
      const float* k = krow(j);
      for (int64_t x = 0; x < Dk; ++x) kt[x * z.Skp + j] = k[x];
      knorm[j] = 0.5f * s * Dot(k, k, Dk);
      std::copy_n(a.v.row<const float>(b, j, hk), Dv, vp + j * z.Dvp);
    }
    std::fill(qt, qt + Dk * z.Sqp, 0.0f);
    for (int64_t i = 0; i < Sq; ++i) {
      const float* q = qrow(i);
      for (int64_t x = 0; x < Dk; ++x) qt[x * z.Sqp + i] = q[x];
      qnorm[i] = 0.5f * s * Dot(q, q, Dk);
    }
    // Landmarks and proposals.
    SegmentMeans(qrow, Sq, C, Dk, z.Dkp, qbar);
    SegmentMeans(krow, len, C, Dk, z.Dkp, kbar);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t x = 0; x < z.Dkp; ++x) {
        mu[c * z.Dkp + x] = qbar[c * z.Dkp + x] + kbar[c * z.Dkp + x];
        const double eps =
            (cfg.sample && x < Dk) ? rng.normal(CounterRng::stream(b, h, c), x) : 0.0;
        omega[c * z.Dkp + x] = mu[c * z.Dkp + x] + static_cast<float>(eps);
      }
    // Lk = l(k_j, w_c); F_c = softmax_j(Lk_c) V; lse_k.
    MatMul(omega, z.Dkp, kt, z.Skp, lk, z.Skp, C, z.Skp, Dk, /*accumulate=*/false);
    for (int64_t c = 0; c < C; ++c) {
      float* r = lk + c * z.Skp;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < len; ++j) m = std::max(m, r[j] = s * r[j] - knorm[j]);
      float sum = 0;
      for (int64_t j = 0; j < len; ++j) sum += (r[j] = std::exp(r[j] - m));
      for (int64_t j = 0; j < len; ++j) r[j] /= sum;
      std::fill(r + len, r + z.Skp, 0.0f);
      lse_k[c] = m + std::log(sum);
    }
    MatMul(lk, z.Skp, vp, z.Dvp, F, z.Dvp, C, z.Dvp, len, /*accumulate=*/false);
    // Proposal densities l(mu_c', w_c).
    for (int64_t c = 0; c < C; ++c) {
      const float* w = omega + c * z.Dkp;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t c2 = 0; c2 < C; ++c2) {
        const float* u = mu + c2 * z.Dkp;
        m = std::max(m, tmp[c2] = s * Dot(w, u, Dk) - 0.5f * s * Dot(u, u, Dk));
      }
      float sum = 0;
      for (int64_t c2 = 0; c2 < C; ++c2) sum += std::exp(tmp[c2] - m);
      const float lse_mu = m + std::log(sum);
      bh[c] = std::exp(tmp[c] - lse_mu);
      log_q[c] = cfg.mis == LaraMis::kOpt ? tmp[c] : lse_mu;
    }
    // w_c . q_n for all n; t_nc (softmax over queries) or mu_c . q_n.
    MatMul(omega, z.Dkp, qt, z.Sqp, lq, z.Sqp, C, z.Sqp, Dk, /*accumulate=*/false);
    if (cfg.mis == LaraMis::kOpt) {
      MatMul(qbar, z.Dkp, qt, z.Sqp, tq, z.Sqp, C, z.Sqp, Dk, /*accumulate=*/false);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < Sq; ++i) tq[c * z.Sqp + i] *= s;
      SoftmaxRows(tq, z.Sqp, C, z.Sqp, [&](int64_t) { return Sq; });
    } else if (cfg.mis == LaraMis::kBiased) {
      MatMul(mu, z.Dkp, qt, z.Sqp, tq, z.Sqp, C, z.Sqp, Dk, /*accumulate=*/false);
    }
    for (int64_t i = 0; i < Sq; ++i) {
      float t_mean = 0;
      if (cfg.mis == LaraMis::kOpt) {
        for (int64_t c = 0; c < C; ++c) t_mean += tq[c * z.Sqp + i] / static_cast<float>(C);
      }
      for (int64_t c = 0; c < C; ++c) {
        float log_alpha = 0.0f;
        if (cfg.mis == LaraMis::kOpt) {
          const double alpha = bh[c] + cfg.alpha * (tq[c * z.Sqp + i] - t_mean);
          log_alpha = static_cast<float>(std::log(std::max(alpha, 1e-8)));
        } else if (cfg.mis == LaraMis::kBiased) {
          log_alpha = s * tq[c * z.Sqp + i];
        }
        logits[c] = log_alpha + (s * lq[c * z.Sqp + i] - qnorm[i]) + lse_k[c] - log_q[c];
      }
      SoftmaxRows(logits, z.Lp, 1, C, [&](int64_t) { return C; });
      float* dst = a.out.row<float>(b, i, h);
      std::fill(dst, dst + Dv, 0.0f);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t x = 0; x < Dv; ++x) dst[x] += logits[c] * F[c * z.Dvp + x];
    }
  });
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(LaraForward);

void lara_forward(const AttentionArgs& a, const Problem& p, const LaraConfig& c, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LaraForward)(a, p, c, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
