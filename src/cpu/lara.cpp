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

// Padded sizes of one call.
struct Sizes {
  int64_t L, Dk, Dkp, Dvp, Skp, Sqp, Lp;
};

// Per-worker scratch of one (batch, q head) task (Carve layout).
struct Scratch {
  float* kt;  // [Dk][Skp] keys transposed
  float* vp;  // [Skp][Dvp] values
  float* qt;  // [Dk][Sqp] queries transposed
  float* lq;  // [L][Sqp] w_c . q_n
  float* tq;  // [L][Sqp] t_nc (opt: softmax over queries) or mu_c . q_n (biased)
  float* lk;  // [L][Skp] l(k_j, w_c), then softmax_j
  float *qbar, *kbar, *mu, *omega;     // [L][Dkp] segment means, proposal means and draws
  float* F;                            // [L][Dvp] F_c = softmax_j(lk_c) V
  float* knorm;                        // [Skp] s |k|^2 / 2
  float* qnorm;                        // [Sqp] s |q|^2 / 2
  float *lse_k, *log_q, *bh, *logits;  // [Lp]
  float* tmp;                          // [2 Lp]
  Scratch(Carve& c, const Sizes& z)
      : kt(c.take(z.Dk * z.Skp)),
        vp(c.take(z.Skp * z.Dvp)),
        qt(c.take(z.Dk * z.Sqp)),
        lq(c.take(z.L * z.Sqp)),
        tq(c.take(z.L * z.Sqp)),
        lk(c.take(z.L * z.Skp)),
        qbar(c.take(z.L * z.Dkp)),
        kbar(c.take(z.L * z.Dkp)),
        mu(c.take(z.L * z.Dkp)),
        omega(c.take(z.L * z.Dkp)),
        F(c.take(z.L * z.Dvp)),
        knorm(c.take(z.Skp)),
        qnorm(c.take(z.Sqp)),
        lse_k(c.take(z.Lp)),
        log_q(c.take(z.Lp)),
        bh(c.take(z.Lp)),
        logits(c.take(z.Lp)),
        tmp(c.take(2 * z.Lp)) {}
};

// One (batch b, q head h) task of LaraForward, in the steps of SPEC 2(a).
struct LaraTask {
  const AttentionArgs& a;
  const LaraConfig& cfg;
  const Sizes& z;
  const CounterRng& rng;
  const Scratch& w;
  const int64_t b, h, hk, Sq, len, C, Dk, Dv;
  const float s;

  const float* qrow(int64_t i) const { return a.q.row<const float>(b, i, h); }
  const float* krow(int64_t j) const { return a.k.row<const float>(b, j, hk); }

  // Packed operands and the half squared norms.
  void Pack() const {
    std::fill(w.kt, w.kt + Dk * z.Skp, 0.0f);
    std::fill(w.vp, w.vp + z.Skp * z.Dvp, 0.0f);
    for (int64_t j = 0; j < len; ++j) {
      const float* k = krow(j);
      for (int64_t x = 0; x < Dk; ++x) w.kt[x * z.Skp + j] = k[x];
      w.knorm[j] = 0.5f * s * Dot(k, k, Dk);
      std::copy_n(a.v.row<const float>(b, j, hk), Dv, w.vp + j * z.Dvp);
    }
    std::fill(w.qt, w.qt + Dk * z.Sqp, 0.0f);
    for (int64_t i = 0; i < Sq; ++i) {
      const float* q = qrow(i);
      for (int64_t x = 0; x < Dk; ++x) w.qt[x * z.Sqp + i] = q[x];
      w.qnorm[i] = 0.5f * s * Dot(q, q, Dk);
    }
  }

  // Landmarks (segment means) and proposals w_c = mu_c (+ a draw when sampling).
  void Proposals() const {
    SegmentMeans([&](int64_t i) { return qrow(i); }, Sq, C, Dk, z.Dkp, w.qbar);
    SegmentMeans([&](int64_t j) { return krow(j); }, len, C, Dk, z.Dkp, w.kbar);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t x = 0; x < z.Dkp; ++x) {
        w.mu[c * z.Dkp + x] = w.qbar[c * z.Dkp + x] + w.kbar[c * z.Dkp + x];
        const double eps =
            (cfg.sample && x < Dk) ? rng.normal(CounterRng::stream(b, h, c), x) : 0.0;
        w.omega[c * z.Dkp + x] = w.mu[c * z.Dkp + x] + static_cast<float>(eps);
      }
  }

  // Lk = l(k_j, w_c); F_c = softmax_j(Lk_c) V; lse_k; the proposal densities l(mu_c', w_c).
  void KeySide() const {
    MatMul(w.omega, z.Dkp, w.kt, z.Skp, w.lk, z.Skp, C, z.Skp, Dk, /*accumulate=*/false);
    for (int64_t c = 0; c < C; ++c) {
      float* r = w.lk + c * z.Skp;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < len; ++j) m = std::max(m, r[j] = s * r[j] - w.knorm[j]);
      float sum = 0;
      for (int64_t j = 0; j < len; ++j) sum += (r[j] = std::exp(r[j] - m));
      for (int64_t j = 0; j < len; ++j) r[j] /= sum;
      std::fill(r + len, r + z.Skp, 0.0f);
      w.lse_k[c] = m + std::log(sum);
    }
    MatMul(w.lk, z.Skp, w.vp, z.Dvp, w.F, z.Dvp, C, z.Dvp, len, /*accumulate=*/false);
    for (int64_t c = 0; c < C; ++c) {
      const float* om = w.omega + c * z.Dkp;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t c2 = 0; c2 < C; ++c2) {
        const float* u = w.mu + c2 * z.Dkp;
        m = std::max(m, w.tmp[c2] = s * Dot(om, u, Dk) - 0.5f * s * Dot(u, u, Dk));
      }
      float sum = 0;
      for (int64_t c2 = 0; c2 < C; ++c2) sum += std::exp(w.tmp[c2] - m);
      const float lse_mu = m + std::log(sum);
      w.bh[c] = std::exp(w.tmp[c] - lse_mu);
      w.log_q[c] = cfg.mis == LaraMis::kOpt ? w.tmp[c] : lse_mu;
    }
  }

  // w_c . q_n for all n; t_nc (softmax over queries) or mu_c . q_n; then per query the
  // multiple-importance-sampling weights over the C proposals and out = sum_c weight F_c.
  void Queries() const {
    MatMul(w.omega, z.Dkp, w.qt, z.Sqp, w.lq, z.Sqp, C, z.Sqp, Dk, /*accumulate=*/false);
    if (cfg.mis == LaraMis::kOpt) {
      MatMul(w.qbar, z.Dkp, w.qt, z.Sqp, w.tq, z.Sqp, C, z.Sqp, Dk, /*accumulate=*/false);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < Sq; ++i) w.tq[c * z.Sqp + i] *= s;
      SoftmaxRows(w.tq, z.Sqp, C, z.Sqp, [&](int64_t) { return Sq; });
    } else if (cfg.mis == LaraMis::kBiased) {
      MatMul(w.mu, z.Dkp, w.qt, z.Sqp, w.tq, z.Sqp, C, z.Sqp, Dk, /*accumulate=*/false);
    }
    for (int64_t i = 0; i < Sq; ++i) {
      float t_mean = 0;
      if (cfg.mis == LaraMis::kOpt) {
        for (int64_t c = 0; c < C; ++c) t_mean += w.tq[c * z.Sqp + i] / static_cast<float>(C);
      }
      for (int64_t c = 0; c < C; ++c) {
        float log_alpha = 0.0f;
        if (cfg.mis == LaraMis::kOpt) {
          const double alpha = w.bh[c] + cfg.alpha * (w.tq[c * z.Sqp + i] - t_mean);
          log_alpha = static_cast<float>(std::log(std::max(alpha, 1e-8)));
        } else if (cfg.mis == LaraMis::kBiased) {
          log_alpha = s * w.tq[c * z.Sqp + i];
        }
        w.logits[c] = log_alpha + (s * w.lq[c * z.Sqp + i] - w.qnorm[i]) + w.lse_k[c] - w.log_q[c];
      }
      SoftmaxRows(w.logits, z.Lp, 1, C, [&](int64_t) { return C; });
      float* dst = a.out.row<float>(b, i, h);
      std::fill(dst, dst + Dv, 0.0f);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t x = 0; x < Dv; ++x) dst[x] += w.logits[c] * w.F[c * z.Dvp + x];
    }
  }
};

void LaraForward(const AttentionArgs& a, const Problem& pr, const LaraConfig& cfg, Context& ctx) {
  const int64_t Sq = pr.Sq, Sk = pr.Sk;
  const int64_t L =
      std::max<int64_t>(1, std::min<int64_t>({cfg.landmarks, Sq, std::max<int64_t>(Sk, 1)}));
  const Sizes z{L,
                pr.Dk,
                pad_to_state(pr.Dk),
                pad_to_state(pr.Dv),
                pad_to_state(std::max<int64_t>(Sk, 1)),
                pad_to_state(Sq),
                pad_to_state(L)};
  const CounterRng rng(cfg.seed);
  ctx.reserve_scratch(Carve::floats<Scratch>(z));
  ctx.parallel_for(pr.B * pr.Hq, [&](int64_t task, int worker) {
    const int64_t b = task / pr.Hq, h = task % pr.Hq;
    const int64_t len = pr.key_length(b);
    const int64_t C = std::min<int64_t>({cfg.landmarks, Sq, len});
    if (C == 0) {
      for (int64_t i = 0; i < Sq; ++i)
        std::fill(a.out.row<float>(b, i, h), a.out.row<float>(b, i, h) + pr.Dv, 0.0f);
      return;
    }
    Carve carve(ctx.scratch(worker));
    const Scratch w(carve, z);
    const LaraTask t{a,     cfg,
                     z,     rng,
                     w,     b,
                     h,     pr.kv_head(h),
                     Sq,    len,
                     C,     pr.Dk,
                     pr.Dv, static_cast<float>(pr.scale)};
    t.Pack();
    t.Proposals();
    t.KeySide();
    t.Queries();
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
