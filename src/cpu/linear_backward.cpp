// Backward of de Brebisson & Vincent linear attention (math in ref::linear_backward_ref),
// chunked like the forward so every product is a register-tiled matmul. With key features
// F_j = w_j phi(k_j) (w_j the gate weight), A_i = phi(q_i), a_ij = A_i . F_j:
//   num_i = sum_{j < vis_i} a_ij v_j, den_i = sum_{j < vis_i} a_ij, out_i = f_i num_i;
//   dnum_i = f_i dout_i, dden_i = -(dout_i . num_i) / den_i^2 (kernel norm, else 0);
//   G_ij = dnum_i . v_j + dden_i over visible j;
//   dA_i = sum_j G_ij F_j, dF_j = sum_i G_ij A_i, dv_j = sum_i a_ij dnum_i,
//   then dq = phi'(q) dA, dk = w phi'(k) dF, dgate = 2 u^2 (1 - u) phi(k) . dF (u = sigmoid).
// Query blocks of T rows (T = the config's chunk). Block b's rows all see the keys before
// E_{b-1} (the previous block's last row's visible count; vis(0) for the first) through a
// state, and the keys [E_{b-1}, E_b) through a masked T x T block:
//   forward pass: C = sum F_j v_j^T, z = sum F_j over the earlier keys; per block num, den,
//     dnum, dden, and dA = dnum C^T + dden z^T + (M * (dnum V^T + dden)) F_blk, keeping the
//     block's masked products M * A F^T and M * G for the reverse pass (Sq x T floats each);
//   reverse pass, blocks last to first, with dC = sum A_i dnum_i^T, dz = sum A_i dden_i
//     over the later rows: dF_blk = V_blk dC^T + dz + (M * G)^T A_blk,
//     dv_blk = F_blk dC + (M * A F^T)^T dnum; then the block's rows join dC, dz.
//   Keys before vis(0) are seen by every row: they take the final dC, dz alone.
// Non-causal is the degenerate case (every block's masked set is empty). One task per
// (batch, kv head) owns its keys' gradients and its query heads' dq rows.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/linear_backward.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <algorithm>
#include <cmath>

#include "src/cpu/arena.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/features-inl.h"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
// Internal linkage: each target's helpers (Plan, Buffers, ...) stay in this file (the
// HWY_EXPORT tables below name the entry points through the enclosing namespace).
namespace {

inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// out[0:n) += a x[0:n) * y[0:n); n a multiple of Lanes.
HWY_INLINE void AddProduct(float a, const float* HWY_RESTRICT x, const float* HWY_RESTRICT y,
                           float* HWY_RESTRICT out, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto va = hn::Set(d, a);
  for (int64_t i = 0; i < n; i += N) {
    const auto xy = hn::Mul(hn::LoadU(d, x + i), hn::LoadU(d, y + i));
    hn::StoreU(hn::MulAdd(va, xy, hn::LoadU(d, out + i)), d, out + i);
  }
}

// Per-worker scratch of one (batch, kv head) task (Carve layout).
struct Buffers {
  float *phik, *dphik, *w, *fq, *dnum, *dden;  // per key / per query row of the head
  float *dk, *dv;                              // the task's key gradients, summed
  float* dphiq;                                // phi'(q) of one block
  float *c, *z, *ct, *dc, *dz;                 // states
  float *fkb, *fkt, *vb, *vt, *fqt;            // one block's operands
  float *s, *g;                                // every block's masked products [sq][tp]
  float *st, *gt, *num, *dfq, *dfk, *dvb;      // one block's products
  Buffers(Carve& k, int64_t sq, int64_t sk, int64_t dkp, int64_t dvp, int64_t tp)
      : phik(k.take(sk * dkp)),
        dphik(k.take(sk * dkp)),
        w(k.take(sk)),
        fq(k.take(sq * dkp)),
        dnum(k.take(sq * dvp)),
        dden(k.take(sq)),
        dk(k.take(sk * dkp)),
        dv(k.take(sk * dvp)),
        dphiq(k.take(tp * dkp)),
        c(k.take(dkp * dvp)),
        z(k.take(dkp)),
        ct(k.take(dvp * dkp)),
        dc(k.take(dkp * dvp)),
        dz(k.take(dkp)),
        fkb(k.take(tp * dkp)),
        fkt(k.take(dkp * tp)),
        vb(k.take(tp * dvp)),
        vt(k.take(dvp * tp)),
        fqt(k.take(dkp * tp)),
        s(k.take(sq * tp)),
        g(k.take(sq * tp)),
        st(k.take(tp * tp)),
        gt(k.take(tp * tp)),
        num(k.take(tp * dvp)),
        dfq(k.take(tp * dkp)),
        dfk(k.take(tp * dkp)),
        dvb(k.take(tp * dvp)) {}
};

// The normaliser f of a row that sees n keys with denominator den (kernel), and the
// gradient of out . dout with respect to den (dd; kernel only).
inline void Normaliser(LinearNorm norm, int64_t n, float den, const float* dout, const float* num,
                       int64_t Dv, float& f, float& dd) {
  f = dd = 0.0f;
  switch (norm) {
    case LinearNorm::kNone:
      f = n > 0 ? 1.0f : 0.0f;
      break;
    case LinearNorm::kLength:
      f = n > 0 ? 1.0f / static_cast<float>(n) : 0.0f;
      break;
    case LinearNorm::kFixed1000:
      f = n > 0 ? 1000.0f / static_cast<float>(n) : 0.0f;
      break;
    case LinearNorm::kKernel:
      f = den > 0.0f ? 1.0f / den : 0.0f;
      dd = den > 0.0f ? -Dot(dout, num, Dv) / (den * den) : 0.0f;
      break;
  }
}

// One (batch b, kv head hk) task: for each query head of the group, a forward sweep over
// blocks of T query rows (dq, and dnum, dden per row), then a reverse sweep over key blocks
// (dk, dv, dgate). The task owns its key rows and its query heads' rows.
struct LinearBackwardTask {
  const BackwardArgs& g;
  const AttentionArgs& a;
  const Problem& pr;
  const LinearConfig& cfg;
  const Buffers& u;
  const int64_t b, hk, Sq, Dk, Dv, Dkp, Dvp, T, Tp, len, blocks;

  int64_t Vis(int64_t i) const { return pr.keys(b, i).end; }

  // Key features, their derivatives and gate weights, shared by the group's query heads (k is
  // read once: the strided rows cost cache misses); zeroed gradients.
  void PrepareKeys() const {
    std::fill(u.dk, u.dk + pr.Sk * Dkp, 0.0f);
    std::fill(u.dv, u.dv + pr.Sk * Dvp, 0.0f);
    for (int64_t j = 0; j < pr.Sk; ++j) {
      if (cfg.gated) g.dgate.at<float>(b, j, hk) = 0.0f;
      if (j >= len) continue;
      if (j + kPrefetchRows < len)
        PrefetchRow(a.k.row_address(b, j + kPrefetchRows, hk), Dk * sizeof(float));
      FeatureRowWithGrad(a.k.row<const float>(b, j, hk), Dk, Dkp, cfg.map, u.phik + j * Dkp,
                         u.dphik + j * Dkp);
      u.w[j] = cfg.gated ? std::pow(Sigmoid(a.gate.at<const float>(b, j, hk)), 2.0f) : 1.0f;
    }
  }

  // Keys [j0, j0 + n) into fkb (weighted features, rows), fkt (transposed), vb, vt.
  void LoadKeys(int64_t j0, int64_t n) const {
    std::fill(u.fkt, u.fkt + Dkp * Tp, 0.0f);
    std::fill(u.vt, u.vt + Dvp * Tp, 0.0f);
    for (int64_t x = 0; x < n; ++x) {
      const float* ph = u.phik + (j0 + x) * Dkp;
      float* f = u.fkb + x * Dkp;
      for (int64_t r = 0; r < Dkp; ++r) f[r] = u.w[j0 + x] * ph[r];
      if (j0 + x + kPrefetchRows < len)
        PrefetchRow(a.v.row_address(b, j0 + x + kPrefetchRows, hk), Dv * sizeof(float));
      CopyPadded(a.v.row<const float>(b, j0 + x, hk), Dv, u.vb + x * Dvp, Dvp);
    }
    Transpose(u.fkb, Dkp, n, Dk, u.fkt, Tp);
    Transpose(u.vb, Dvp, n, Dv, u.vt, Tp);
  }

  // The masked block product g = M * (dnum V^T + dden) of rows [i0, i0 + rows) against keys
  // [j0, j0 + n), into g's rows i0.. (kept for the reverse sweep, as s is).
  void BlockGrads(int64_t i0, int64_t rows, int64_t j0, int64_t n) const {
    float* g_blk = u.g + i0 * Tp;
    MatMul(u.dnum + i0 * Dvp, Dvp, u.vt, Tp, g_blk, Tp, rows, Tp, Dv, false);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t seen = std::clamp<int64_t>(Vis(i0 + r) - j0, 0, n);
      float* gr = g_blk + r * Tp;
      for (int64_t x = 0; x < seen; ++x) gr[x] += u.dden[i0 + r];
      std::fill(gr + seen, gr + Tp, 0.0f);
    }
  }

  // dF, dv of keys [j0, j0 + n) loaded by LoadKeys: the later rows' part (dC, dz), plus
  // the masked block of rows [i0, i0 + rows) (rows may be 0; its s and g from the forward
  // sweep); then dgate, and dk, dv into the task's sums.
  void KeyGrads(int64_t j0, int64_t n, int64_t i0, int64_t rows) const {
    std::fill(u.ct, u.ct + Dvp * Dkp, 0.0f);
    Transpose(u.dc, Dvp, Dk, Dvp, u.ct, Dkp);  // dC^T [Dvp][Dkp]
    MatMul(u.vb, Dvp, u.ct, Dkp, u.dfk, Dkp, n, Dkp, Dv, false);
    MatMul(u.fkb, Dkp, u.dc, Dvp, u.dvb, Dvp, n, Dvp, Dk, false);
    if (rows > 0) {
      Transpose(u.g + i0 * Tp, Tp, rows, n, u.gt, Tp);
      Transpose(u.s + i0 * Tp, Tp, rows, n, u.st, Tp);
      MatMul(u.gt, Tp, u.fq + i0 * Dkp, Dkp, u.dfk, Dkp, n, Dkp, rows, true);
      MatMul(u.st, Tp, u.dnum + i0 * Dvp, Dvp, u.dvb, Dvp, n, Dvp, rows, true);
    }
    for (int64_t x = 0; x < n; ++x) {
      const int64_t j = j0 + x;
      float* dfk = u.dfk + x * Dkp;  // zero past Dk, as dz is
      Axpy(1.0f, u.dz, dfk, Dkp);
      if (cfg.gated) {
        const float sg = Sigmoid(a.gate.at<const float>(b, j, hk));
        g.dgate.at<float>(b, j, hk) +=
            Dot(u.phik + j * Dkp, dfk, Dkp) * 2.0f * sg * sg * (1.0f - sg);
      }
      AddProduct(u.w[j], dfk, u.dphik + j * Dkp, u.dk + j * Dkp, Dkp);  // dk = w phi'(k) dF
      Axpy(1.0f, u.dvb + x * Dvp, u.dv + j * Dvp, Dvp);
    }
  }

  // The task's summed key gradients into dk, dv (zero for keys past the length).
  void StoreKeyGrads() const {
    for (int64_t j = 0; j < pr.Sk; ++j) {
      std::copy_n(u.dk + j * Dkp, Dk, g.dk.row<float>(b, j, hk));
      std::copy_n(u.dv + j * Dvp, Dv, g.dv.row<float>(b, j, hk));
    }
  }

  // The keys block blk's rows see beyond the previous block's: [E_{b-1}, E_b).
  std::pair<int64_t, int64_t> BlockKeys(int64_t blk) const {
    const int64_t i0 = blk * T, i1 = std::min(Sq, i0 + T);
    const int64_t from = blk == 0 ? Vis(0) : Vis(i0 - 1);
    return {from, std::max(from, Vis(i1 - 1))};
  }

  // Forward sweep, block blk of head h: the state C, z takes the keys before the block
  // (in_state advances), then num, den, dnum, dden per row and dq.
  void ForwardBlock(int64_t h, int64_t blk, int64_t& in_state) const {
    const int64_t i0 = blk * T, rows = std::min(T, Sq - i0);
    const auto [j0, j1] = BlockKeys(blk);
    while (in_state < j0) {  // C += F^T V, z += sum F over keys [in_state, j0)
      const int64_t n = std::min(Tp, j0 - in_state);
      LoadKeys(in_state, n);
      MatMul(u.fkt, Tp, u.vb, Dvp, u.c, Dvp, Dk, Dvp, n, true);
      for (int64_t x = 0; x < n; ++x) Axpy(1.0f, u.fkb + x * Dkp, u.z, Dkp);
      in_state += n;
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (i0 + r + kPrefetchRows < Sq) {  // this block's dout rows are read next
        PrefetchRow(a.q.row_address(b, i0 + r + kPrefetchRows, h), Dk * sizeof(float));
        PrefetchRow(g.dout.row_address(b, i0 + r, h), Dv * sizeof(float));
      }
      FeatureRowWithGrad(a.q.row<const float>(b, i0 + r, h), Dk, Dkp, cfg.map,
                         u.fq + (i0 + r) * Dkp, u.dphiq + r * Dkp);
    }
    MatMul(u.fq + i0 * Dkp, Dkp, u.c, Dvp, u.num, Dvp, rows, Dvp, Dk, false);
    LoadKeys(j0, j1 - j0);
    float* s_blk = u.s + i0 * Tp;  // s = M * (A F^T), kept for the reverse sweep
    MatMul(u.fq + i0 * Dkp, Dkp, u.fkt, Tp, s_blk, Tp, rows, Tp, Dk, false);
    for (int64_t r = 0; r < rows; ++r) {  // mask the block, then num, den, dnum, dden
      const int64_t i = i0 + r, seen = std::clamp<int64_t>(Vis(i) - j0, 0, j1 - j0);
      float* sr = s_blk + r * Tp;
      std::fill(sr + seen, sr + Tp, 0.0f);
      float den = Dot(u.fq + i * Dkp, u.z, Dkp);
      for (int64_t x = 0; x < seen; ++x) den += sr[x];
      MatMulRows<1>(sr, Tp, u.vb, Dvp, seen, Dvp, u.num + r * Dvp, Dvp, true);
      const float* dout = g.dout.row<const float>(b, i, h);
      float f = 0.0f, dd = 0.0f;
      Normaliser(cfg.norm, Vis(i), den, dout, u.num + r * Dvp, Dv, f, dd);
      float* dn = u.dnum + i * Dvp;
      for (int64_t x = 0; x < Dv; ++x) dn[x] = f * dout[x];
      std::fill(dn + Dv, dn + Dvp, 0.0f);
      u.dden[i] = dd;
    }
    // dA = dnum C^T + dden z^T + (M * (dnum V^T + dden)) F_blk.
    std::fill(u.ct, u.ct + Dvp * Dkp, 0.0f);
    Transpose(u.c, Dvp, Dk, Dvp, u.ct, Dkp);
    MatMul(u.dnum + i0 * Dvp, Dvp, u.ct, Dkp, u.dfq, Dkp, rows, Dkp, Dv, false);
    BlockGrads(i0, rows, j0, j1 - j0);
    MatMul(u.g + i0 * Tp, Tp, u.fkb, Dkp, u.dfq, Dkp, rows, Dkp, j1 - j0, true);
    for (int64_t r = 0; r < rows; ++r) {
      float* dfq = u.dfq + r * Dkp;
      if (u.dden[i0 + r] != 0.0f) Axpy(u.dden[i0 + r], u.z, dfq, Dkp);
      float* dq = g.dq.row<float>(b, i0 + r, h);  // dq = phi'(q) dA
      const float* dphi = u.dphiq + r * Dkp;
      for (int64_t x = 0; x < Dk; ++x) dq[x] = dphi[x] * dfq[x];
    }
  }

  // Reverse sweep of head h: dk, dv, dgate from the running dC, dz of the later rows.
  void ReverseSweep() const {
    std::fill(u.dc, u.dc + Dkp * Dvp, 0.0f);
    std::fill(u.dz, u.dz + Dkp, 0.0f);
    for (int64_t blk = blocks - 1; blk >= 0; --blk) {
      const int64_t i0 = blk * T, rows = std::min(T, Sq - i0);
      const auto [j0, j1] = BlockKeys(blk);
      if (j1 > j0) {
        LoadKeys(j0, j1 - j0);
        KeyGrads(j0, j1 - j0, i0, rows);
      }
      // The block's rows join dC += A^T dnum, dz += A^T dden.
      std::fill(u.fqt, u.fqt + Dkp * Tp, 0.0f);
      Transpose(u.fq + i0 * Dkp, Dkp, rows, Dk, u.fqt, Tp);
      MatMul(u.fqt, Tp, u.dnum + i0 * Dvp, Dvp, u.dc, Dvp, Dk, Dvp, rows, true);
      for (int64_t r = 0; r < rows; ++r)
        if (u.dden[i0 + r] != 0.0f) Axpy(u.dden[i0 + r], u.fq + (i0 + r) * Dkp, u.dz, Dkp);
    }
    // Keys every row sees.
    for (int64_t j0 = 0, end = std::min(Vis(0), len); j0 < end; j0 += Tp) {
      const int64_t n = std::min(Tp, end - j0);
      LoadKeys(j0, n);
      KeyGrads(j0, n, 0, 0);
    }
  }

  void Run() const {
    PrepareKeys();
    for (int64_t h = hk * pr.group; h < (hk + 1) * pr.group; ++h) {
      std::fill(u.c, u.c + Dkp * Dvp, 0.0f);
      std::fill(u.z, u.z + Dkp, 0.0f);
      int64_t in_state = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) ForwardBlock(h, blk, in_state);
      ReverseSweep();
    }
    StoreKeyGrads();
  }
};

void LinearBackward(const BackwardArgs& g, const Problem& pr, const LinearConfig& cfg,
                    Context& ctx) {
  const int64_t Dkp = pad_to_state(pr.Dk), Dvp = pad_to_state(pr.Dv);
  const int64_t T = std::max(1, cfg.chunk), Tp = pad_to_state(T);
  ctx.reserve_scratch(Carve::floats<Buffers>(pr.Sq, pr.Sk, Dkp, Dvp, Tp));
  ctx.parallel_for(pr.B * pr.Hk, [&](int64_t task, int worker) {
    const int64_t b = task / pr.Hk, hk = task % pr.Hk;
    Carve carve(ctx.scratch(worker));
    const Buffers u(carve, pr.Sq, pr.Sk, Dkp, Dvp, Tp);
    const LinearBackwardTask t{g,
                               g.forward,
                               pr,
                               cfg,
                               u,
                               b,
                               hk,
                               pr.Sq,
                               pr.Dk,
                               pr.Dv,
                               Dkp,
                               Dvp,
                               T,
                               Tp,
                               pr.key_length(b),
                               hwy::DivCeil(pr.Sq, T)};
    t.Run();
  });
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(LinearBackward);

void linear_backward(const BackwardArgs& g, const Problem& p, const LinearConfig& c, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(LinearBackward)(g, p, c, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
