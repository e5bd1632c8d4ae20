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
#include "src/cpu/ops/log_chunks-inl.h"
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

  // Query head h's gradients (dk, dv added to).
  void Head(int64_t h) const {
    std::fill(w.vb, w.vb + Dvp, 0.0f);
    std::fill(w.db, w.db + Dvp, 0.0f);
    ForwardSweep(h);
    ReverseSweep(h);
  }
};

// The chunked backward on the forward's chunks (log_chunks-inl.h). Per chunk with maxima
// M, normalised weights W_i = a_i / den_i, E_j = exp(lk_j - M), P_ij = W_i . E_j and
// G_ij = dout_i . v_j + delta_i over visible pairs:
//   dlq_i = W_i * (C dout_i + z delta_i + sum_j G_ij E_j)   (C, z: the slot before the chunk's
//   keys, at M). Reverse over chunks with the adjoint of the later chunks' rows,
//   dC = sum_i W_i exp(mu - M(i)) dout_i^T, dZ likewise with delta_i (mu: the latest joined
//   chunk's maxima, at least any earlier key's log-features):
//   dlk_j = exp(lk_j - mu) * (dC v_j + dZ) + E_j * sum_i G_ij W_i,
//   dv_j = dC^T exp(lk_j - mu) + sum_i P_ij dout_i.
// Every exp argument is <= 0. A head with a chunk the forward would not rebase
// (RebaseIsExact) runs the per-key sweeps instead.
struct ChunkedScratch {
  ChunkScratch sc;
  float *wrows, *delta, *mchunks;  // [Sq][Fp], [Sq], [chunks][Fp]
  float *dout, *vt, *g, *gt, *p, *pt, *wt, *ct;
  float *dlk, *dvb, *e2, *e, *et, *y, *dlq, *dc, *dz, *mu;
  float *omega_p, *dx;  // [Fp][Dkp] omega zero-padded (rfa / performer), [Tp][Dkp]
  ChunkedScratch(Carve& k, const Plan& n, bool projected)
      : sc(k, n, projected),
        wrows(k.take(n.Sq * n.Fp)),
        delta(k.take(n.Sq)),
        mchunks(k.take(hwy::DivCeil(n.Sq, n.T) * n.Fp)),
        dout(k.take(n.T * n.Dvp)),
        vt(k.take(n.Dvp * n.Tp)),
        g(k.take(n.T * n.Tp)),
        gt(k.take(n.Tp * n.T)),
        p(k.take(n.T * n.Tp)),
        pt(k.take(n.Tp * n.T)),
        wt(k.take(n.Fp * n.T)),
        ct(k.take(n.Dvp * n.Fp)),
        dlk(k.take(n.Tp * n.Fp)),
        dvb(k.take(n.Tp * n.Dvp)),
        e2(k.take(n.Tp * n.Fp)),
        e(k.take(n.Tp * n.Fp)),
        et(k.take(n.Fp * n.Tp)),
        y(k.take(n.Tp * n.Fp)),
        dlq(k.take(n.T * n.Fp)),
        dc(k.take(n.Fp * n.Dvp)),
        dz(k.take(n.Fp)),
        mu(k.take(n.Fp)),
        omega_p(k.take(projected ? n.Fp * pad_to_state(n.Dk) : 0)),
        dx(k.take(projected ? n.Tp * pad_to_state(n.Dk) : 0)) {}
};

struct ChunkedBackward {
  const BackwardArgs& g;
  const AttentionArgs& a;
  const Plan& n;
  const LogFeatures& f;
  ChunkedScratch& u;
  ChunkScratch& sc;
  const float* omega;
  const int64_t b, hk;
  struct Chunk {
    int64_t i0, rows, bulk, pending, hi;  // keys [bulk, pending) in blocks, [pending, hi)
  };
  std::vector<Chunk> chunks;

  int64_t Vis(int64_t i, int64_t from) const { return n.keys(b, i).end - from; }

  // u.omega_p = this kv head's omega [features][Dk], zero-padded to [Fp][Dkp].
  void PadOmega() const {
    const int64_t dkp = pad_to_state(n.Dk);
    std::fill(u.omega_p, u.omega_p + n.Fp * dkp, 0.0f);
    for (int64_t r = 0; r < f.features; ++r)
      std::copy_n(omega + r * n.Dk, n.Dk, u.omega_p + r * dkp);
  }

  // Rows [r0, r0 + cnt) of head h of dx += d(log-features)/dx^T dl (dl [cnt][Fp]): dl itself
  // (heinsen), or for lf = s omega x - s^2 |x|^2 / 2 (keys: with_norm) one matmul
  // s dl omega, less s^2 x sum_r dl_r.
  void ChainRows(const ConstTensorView& x, const TensorView& dx, int64_t r0, int64_t cnt, int64_t h,
                 const float* dl, bool with_norm) const {
    if (omega == nullptr) {
      for (int64_t j = 0; j < cnt; ++j)
        ChainLogFeatures(nullptr, dl + j * n.Fp, n.Dk, f, nullptr, with_norm,
                         dx.row<float>(b, r0 + j, h));
      return;
    }
    const int64_t dkp = pad_to_state(n.Dk);
    const float s = f.sqrt_scale;
    MatMul(dl, n.Fp, u.omega_p, dkp, u.dx, dkp, cnt, dkp, n.Fp, /*accumulate=*/false);
    for (int64_t j = 0; j < cnt; ++j) {
      const float* row = x.row<const float>(b, r0 + j, h);
      float* out = dx.row<float>(b, r0 + j, h);
      float total = 0.0f;
      for (int64_t r = 0; r < f.features; ++r) total += dl[j * n.Fp + r];
      const float norm = with_norm ? s * s * total : 0.0f;
      for (int64_t d = 0; d < n.Dk; ++d) out[d] += s * u.dx[j * dkp + d] - norm * row[d];
    }
  }

  // dout rows [i0, i0 + rows) of head h into u.dout (padded).
  void LoadDout(int64_t h, int64_t i0, int64_t rows) const {
    for (int64_t i = 0; i < rows; ++i)
      CopyPadded(g.dout.row<const float>(b, i0 + i, h), n.Dv, u.dout + i * n.Dvp, n.Dvp);
  }

  // u.g = dout V^T over the cnt keys in sc.vb, plus delta, zero past each row's visible keys.
  void ScoreGradients(int64_t i0, int64_t rows, int64_t from, int64_t cnt) const {
    const hn::ScalableTag<float> d;
    const int64_t N = static_cast<int64_t>(hn::Lanes(d)), cols = pad_to_state(cnt);
    Transpose(sc.vb, n.Dvp, cnt, n.Dv, u.vt, n.Tp);
    MatMul(u.dout, n.Dvp, u.vt, n.Tp, u.g, n.Tp, rows, cols, n.Dv, /*accumulate=*/false);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t vis = Vis(i0 + i, from);
      const auto dl = hn::Set(d, u.delta[i0 + i]);
      float* gr = u.g + i * n.Tp;
      for (int64_t j = 0; j < cols; j += N) {
        const auto keep = hn::FirstN(d, static_cast<size_t>(std::clamp<int64_t>(vis - j, 0, N)));
        hn::StoreU(hn::IfThenElseZero(keep, hn::Add(hn::LoadU(d, gr + j), dl)), d, gr + j);
      }
    }
  }

  // The forward over chunks with dq; false (nothing written) when a chunk is not rebased.
  bool Forward(int64_t h) {
    ResetSlot(n, sc);
    chunks.clear();
    for (int64_t i0 = 0, kdone = 0; i0 < n.Sq; i0 += n.T) {
      const int64_t rows = std::min(n.T, n.Sq - i0);
      const int64_t lo = n.keys(b, i0).end, hi = n.keys(b, i0 + rows - 1).end;
      Chunk c{i0, rows, kdone, kdone, hi};
      kdone = AddBulkKeys(a, n, f, b, hk, lo, hi, kdone, sc);
      c.pending = kdone;
      const int64_t cnt = hi - kdone;
      if (!PrepareChunk(a, n, f, b, h, i0, rows, lo, kdone, cnt, sc)) return false;
      std::copy_n(sc.st.m, n.Fp, u.mchunks + chunks.size() * n.Fp);
      ChunkRows(h, i0, rows, kdone, cnt);
      AddToSlot(n, cnt, sc);
      chunks.push_back(c);
      kdone = hi;
    }
    return true;
  }

  // A chunk's rows against the rebased slot (C, z before its cnt pending keys from kdone):
  // out, delta and W (kept for the reverse pass), then dlq and dq.
  void ChunkRows(int64_t h, int64_t i0, int64_t rows, int64_t kdone, int64_t cnt) const {
    ChunkOutputs(n, b, i0, rows, kdone, cnt, sc);
    LoadDout(h, i0, rows);
    for (int64_t i = 0; i < rows; ++i) {
      const float inv = sc.den[i] > 0.0f ? 1.0f / sc.den[i] : 0.0f;
      float* wr = u.wrows + (i0 + i) * n.Fp;
      for (int64_t r = 0; r < n.Fp; ++r) wr[r] = sc.aq[i * n.Fp + r] * inv;
      u.delta[i0 + i] = -Dot(u.dout + i * n.Dvp, sc.acc + i * n.Dvp, n.Dvp) * inv;
    }
    std::fill(u.ct, u.ct + n.Dvp * n.Fp, 0.0f);
    Transpose(sc.st.c, n.Dvp, n.Fp, n.Dv, u.ct, n.Fp);
    MatMul(u.dout, n.Dvp, u.ct, n.Fp, u.dlq, n.Fp, rows, n.Fp, n.Dv, /*accumulate=*/false);
    if (cnt > 0) {
      ScoreGradients(i0, rows, kdone, cnt);
      MatMul(u.g, n.Tp, sc.lk, n.Fp, u.dlq, n.Fp, rows, n.Fp, cnt, /*accumulate=*/true);
    }
    for (int64_t i = 0; i < rows; ++i) {
      const float* wr = u.wrows + (i0 + i) * n.Fp;
      float* dl = u.dlq + i * n.Fp;
      for (int64_t r = 0; r < n.Fp; ++r) dl[r] = wr[r] * (dl[r] + sc.st.z[r] * u.delta[i0 + i]);
      std::fill_n(g.dq.row<float>(b, i0 + i, h), n.Dk, 0.0f);
    }
    ChainRows(a.q, g.dq, i0, rows, h, u.dlq, /*with_norm=*/false);
  }

  // dk, dv of the cnt keys from j0 in sc.lk (log-features) / sc.vb: the joined rows' part
  // (joined: the adjoint holds some), and the rows of chunk c that see them (intra).
  void KeyGrads(int64_t j0, int64_t cnt, bool joined, const Chunk* intra, const float* mc) const {
    std::fill(u.dlk, u.dlk + cnt * n.Fp, 0.0f);
    std::fill(u.dvb, u.dvb + cnt * n.Dvp, 0.0f);
    if (joined) {
      ExpRows(n, sc.lk, u.mu, cnt, u.e2);
      std::fill(u.ct, u.ct + n.Dvp * n.Fp, 0.0f);
      Transpose(u.dc, n.Dvp, n.Fp, n.Dv, u.ct, n.Fp);
      MatMul(sc.vb, n.Dvp, u.ct, n.Fp, u.dlk, n.Fp, cnt, n.Fp, n.Dv, /*accumulate=*/false);
      for (int64_t j = 0; j < cnt; ++j)
        for (int64_t r = 0; r < n.Fp; ++r)
          u.dlk[j * n.Fp + r] = u.e2[j * n.Fp + r] * (u.dlk[j * n.Fp + r] + u.dz[r]);
      MatMul(u.e2, n.Fp, u.dc, n.Dvp, u.dvb, n.Dvp, cnt, n.Dvp, n.Fp, /*accumulate=*/false);
    }
    if (intra != nullptr) {
      const int64_t i0 = intra->i0, rows = intra->rows, cols = pad_to_state(cnt);
      const float* w = u.wrows + i0 * n.Fp;
      Exponentiate(n, sc.lk, mc, cnt, u.e, u.et);
      MatMul(w, n.Fp, u.et, n.Tp, u.p, n.Tp, rows, cols, n.Fp, /*accumulate=*/false);
      for (int64_t i = 0; i < rows; ++i) MaskRow(u.p + i * n.Tp, nullptr, Vis(i0 + i, j0), cols);
      ScoreGradients(i0, rows, j0, cnt);
      Transpose(u.g, n.Tp, rows, cnt, u.gt, n.T);
      MatMul(u.gt, n.T, w, n.Fp, u.y, n.Fp, cnt, n.Fp, rows, /*accumulate=*/false);
      for (int64_t j = 0; j < cnt * n.Fp; ++j) u.dlk[j] += u.e[j] * u.y[j];
      Transpose(u.p, n.Tp, rows, cnt, u.pt, n.T);
      MatMul(u.pt, n.T, u.dout, n.Dvp, u.dvb, n.Dvp, cnt, n.Dvp, rows, /*accumulate=*/true);
    }
    ChainRows(a.k, g.dk, j0, cnt, hk, u.dlk, /*with_norm=*/true);
    for (int64_t j = 0; j < cnt; ++j) {
      float* dv = g.dv.row<float>(b, j0 + j, hk);
      for (int64_t x = 0; x < n.Dv; ++x) dv[x] += u.dvb[j * n.Dvp + x];
    }
  }

  // Chunk c's rows join the adjoint, rebased from mu to their maxima mc (mc <= mu).
  void Join(const Chunk& c, const float* mc, bool joined) const {
    for (int64_t r = 0; r < n.Fp; ++r) {
      if (joined && mc[r] != u.mu[r]) {
        const float sc_r = std::exp(mc[r] - u.mu[r]);
        Scale(sc_r, u.dc + r * n.Dvp, n.Dvp);
        u.dz[r] *= sc_r;
      }
      u.mu[r] = mc[r];
    }
    Transpose(u.wrows + c.i0 * n.Fp, n.Fp, c.rows, n.Fp, u.wt, n.T);
    MatMul(u.wt, n.T, u.dout, n.Dvp, u.dc, n.Dvp, n.Fp, n.Dvp, c.rows, /*accumulate=*/true);
    for (int64_t r = 0; r < n.Fp; ++r) u.dz[r] += Dot(u.wt + r * n.T, u.delta + c.i0, c.rows);
  }

  void Reverse(int64_t h) const {
    std::fill(u.dc, u.dc + n.Fp * n.Dvp, 0.0f);
    std::fill(u.dz, u.dz + n.Fp, 0.0f);
    bool joined = false;
    for (int64_t ci = static_cast<int64_t>(chunks.size()) - 1; ci >= 0; --ci) {
      const Chunk& c = chunks[ci];
      const float* mc = u.mchunks + ci * n.Fp;
      LoadDout(h, c.i0, c.rows);
      if (c.hi > c.pending) {
        LoadKeys(a, n, f, b, hk, c.pending, c.hi - c.pending, sc);
        KeyGrads(c.pending, c.hi - c.pending, joined, &c, mc);
      }
      Join(c, mc, joined);
      joined = true;
      for (int64_t j0 = c.bulk; j0 < c.pending; j0 += n.T) {
        const int64_t cnt = std::min(n.T, c.pending - j0);
        LoadKeys(a, n, f, b, hk, j0, cnt, sc);
        KeyGrads(j0, cnt, true, nullptr, nullptr);
      }
    }
  }
};

void LogLinearBackward(const BackwardArgs& g, const Problem& pr, const LogFeatures& f,
                       Context& ctx) {
  const int64_t F = f.omega ? f.features : pr.Dk, Fp = pad_to_state(F), Dvp = pad_to_state(pr.Dv);
  const Plan n(pr, f);
  const bool projected = f.omega != nullptr;
  ctx.reserve_scratch(std::max(Carve::floats<Scratch>(Fp, Dvp, pr.Sq),
                               Carve::floats<ChunkedScratch>(n, projected)));
  ctx.parallel_for(pr.B * pr.Hk, [&](int64_t task, int worker) {
    const int64_t b = task / pr.Hk, hk = task % pr.Hk;
    const float* omega = projected ? f.omega + hk * f.features * pr.Dk : nullptr;
    zero_key_gradients(g, b, hk);
    for (int64_t h = hk * pr.group; h < (hk + 1) * pr.group; ++h) {
      {
        Carve carve(ctx.scratch(worker));
        ChunkedScratch u(carve, n, projected);
        if (projected) TransposeOmega(n, f, omega, u.sc);
        ChunkedBackward c{g, g.forward, n, f, u, u.sc, omega, b, hk, {}};
        if (projected) c.PadOmega();
        if (c.Forward(h)) {
          c.Reverse(h);
          continue;
        }
      }
      Carve carve(ctx.scratch(worker));
      const Scratch w(carve, Fp, Dvp, pr.Sq);
      const LogLinearBackwardTask t{g, g.forward, pr, f,  w,   omega,
                                    b, hk,        F,  Fp, Dvp, pr.key_length(b)};
      t.Head(h);
    }
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
