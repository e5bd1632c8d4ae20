// LARA (SPEC 2(a), "LARA as implemented"), 1-D segment-mean landmarks without the
// learnable Linear/LayerNorm (those belong to the model, not the kernel):
//   qbar_c, kbar_c: means of C contiguous segments (keys: over the valid length only)
//   mu_c = qbar_c + kbar_c, w_c = mu_c (+ eps_c when sampling)
//   l(x, w) = s w.x - s |x|^2 / 2
//   F_c = sum_m softmax_m(l(k_m, w_c)) v_m
//   log p_n(w_c) = l(q_n, w_c) + LSE_m l(k_m, w_c)
//   weights w_nc = softmax_c(log alpha_nc + log p_n(w_c) - log q_c), out_n = sum_c w_nc F_c
#include "attnkit/random.hpp"
#include "ref_common.hpp"
#include "reference.hpp"

namespace attnkit::ref {
namespace {

// Segment boundaries of SPEC 2(a) step 1: with N % C != 0 the first (N/C + 1) C - N
// segments have N/C tokens, the rest N/C + 1. Returns C + 1 offsets.
std::vector<int64_t> segments(int64_t n, int64_t c) {
  std::vector<int64_t> off(c + 1, 0);
  const int64_t base = n / c;
  const int64_t num_short = (n % c == 0) ? c : (base + 1) * c - n;
  for (int64_t i = 0; i < c; ++i) off[i + 1] = off[i] + (i < num_short ? base : base + 1);
  return off;
}

// rows[off[c]..off[c+1]) of t at (b, h) averaged into means[c * dim ...].
void segment_means(const ConstTensorView& t, int64_t b, int64_t h, const std::vector<int64_t>& off,
                   int64_t dim, std::vector<double>& means) {
  const int64_t c_eff = static_cast<int64_t>(off.size()) - 1;
  means.assign(c_eff * dim, 0.0);
  for (int64_t c = 0; c < c_eff; ++c) {
    for (int64_t j = off[c]; j < off[c + 1]; ++j) {
      const double* x = row(t, b, j, h);
      for (int64_t d = 0; d < dim; ++d) means[c * dim + d] += x[d];
    }
    for (int64_t d = 0; d < dim; ++d)
      means[c * dim + d] /= static_cast<double>(off[c + 1] - off[c]);
  }
}

}  // namespace

void lara_ref(const AttentionArgs& a, const AttentionOptions& o, const LaraConfig& cfg) {
  const Dims n(a, o);
  const int64_t D = n.Dk;
  const double s = logit_scale(o, D);
  const CounterRng rng(cfg.seed);
  auto ell = [&](const double* x, const double* w) {
    return s * dot(w, x, D) - s * dot(x, x, D) / 2;
  };
  std::vector<double> qbar, kbar, mu, omega, F, lse_k, log_q, bh, t_nc, logits, tmp;
  std::vector<const double*> vrows;
  for (int64_t b = 0; b < n.B; ++b) {
    const int64_t len = n.key_length(b);
    for (int64_t h = 0; h < n.Hq; ++h) {
      const int64_t hk = n.kv_head(h);
      const int64_t C = std::min<int64_t>({cfg.landmarks, n.Sq, len});
      if (C == 0) {
        for (int64_t i = 0; i < n.Sq; ++i)
          std::fill(row(a.out, b, i, h), row(a.out, b, i, h) + n.Dv, 0.0);
        continue;
      }
      segment_means(a.q, b, h, segments(n.Sq, C), D, qbar);
      segment_means(a.k, b, hk, segments(len, C), D, kbar);
      mu.resize(C * D);
      omega.resize(C * D);
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t d = 0; d < D; ++d) {
          mu[c * D + d] = qbar[c * D + d] + kbar[c * D + d];
          const double eps = cfg.sample ? rng.normal(CounterRng::stream(b, h, c), d) : 0.0;
          omega[c * D + d] = mu[c * D + d] + eps;
        }
      }
      // F_c and LSE_m l(k_m, w_c) over the valid keys.
      F.assign(C * n.Dv, 0.0);
      lse_k.resize(C);
      vrows.resize(len);
      for (int64_t m = 0; m < len; ++m) vrows[m] = row(a.v, b, m, hk);
      for (int64_t c = 0; c < C; ++c) {
        tmp.resize(len);
        for (int64_t m = 0; m < len; ++m) tmp[m] = ell(row(a.k, b, m, hk), &omega[c * D]);
        lse_k[c] = log_sum_exp(tmp);
        softmax_inplace(tmp);
        weighted_rows(tmp, vrows, n.Dv, &F[c * n.Dv]);
      }
      // Proposal densities: l(mu_c', w_c) for all c, c'.
      log_q.resize(C);
      bh.resize(C);
      for (int64_t c = 0; c < C; ++c) {
        tmp.resize(C);
        for (int64_t c2 = 0; c2 < C; ++c2) tmp[c2] = ell(&mu[c2 * D], &omega[c * D]);
        const double lse_mu = log_sum_exp(tmp);
        const double diag = tmp[c];
        bh[c] = std::exp(diag - lse_mu);
        log_q[c] = (cfg.mis == LaraMis::kOpt) ? diag : lse_mu;
      }
      // t_nc = softmax over queries n of s qbar_c . q_n (mis-opt only).
      if (cfg.mis == LaraMis::kOpt) {
        t_nc.resize(n.Sq * C);
        tmp.resize(n.Sq);
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t i = 0; i < n.Sq; ++i) tmp[i] = s * dot(&qbar[c * D], row(a.q, b, i, h), D);
          softmax_inplace(tmp);
          for (int64_t i = 0; i < n.Sq; ++i) t_nc[i * C + c] = tmp[i];
        }
      }
      logits.resize(C);
      for (int64_t i = 0; i < n.Sq; ++i) {
        const double* q = row(a.q, b, i, h);
        double t_mean = 0;
        if (cfg.mis == LaraMis::kOpt) {
          for (int64_t c = 0; c < C; ++c) t_mean += t_nc[i * C + c] / C;
        }
        for (int64_t c = 0; c < C; ++c) {
          double log_alpha = 0.0;
          if (cfg.mis == LaraMis::kOpt) {
            const double alpha = bh[c] + cfg.alpha * (t_nc[i * C + c] - t_mean);
            log_alpha = std::log(std::max(alpha, 1e-8));
          } else if (cfg.mis == LaraMis::kBiased) {
            log_alpha = s * dot(&mu[c * D], q, D);
          }
          logits[c] = log_alpha + ell(q, &omega[c * D]) + lse_k[c] - log_q[c];
        }
        softmax_inplace(logits);
        double* out = row(a.out, b, i, h);
        std::fill(out, out + n.Dv, 0.0);
        for (int64_t c = 0; c < C; ++c)
          for (int64_t d = 0; d < n.Dv; ++d) out[d] += logits[c] * F[c * n.Dv + d];
      }
    }
  }
}

}  // namespace attnkit::ref
