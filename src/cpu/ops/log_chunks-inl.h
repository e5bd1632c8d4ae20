// The chunked form of the log-feature linear kernel (heinsen, rfa / performer), shared by
// its prefill (src/cpu/log_linear.cpp) and backward (src/cpu/log_linear_backward.cpp):
// per chunk of kChunk query rows the pending keys are rebased to the chunk's new maxima and
// every product is a small matmul. Include at file scope after hwy/highway.h.
#if defined(ATTNKIT_CPU_OPS_LOG_CHUNKS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_CPU_OPS_LOG_CHUNKS_INL_H_
#undef ATTNKIT_CPU_OPS_LOG_CHUNKS_INL_H_
#else
#define ATTNKIT_CPU_OPS_LOG_CHUNKS_INL_H_
#endif

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include <algorithm>

#include "src/cpu/arena.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/log_features-inl.h"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using LogChunkDF = hn::ScalableTag<float>;

// The problem plus the padded value and feature dims.
struct Dims : Problem {
  int64_t Dvp, Fp;
  Dims(const Problem& p, const LogFeatures& f)
      : Problem(p), Dvp(pad_to_state(Dv)), Fp(pad_to_state(f.omega ? f.features : Dk)) {}
};

// Chunked prefill (causal and not), per (batch, q head) and chunk of T query rows, as in
// src/cpu/linear.cpp: the keys no query of the chunk lacks go into the slot in blocks; the
// pending keys (at most Tp) are exponentiated against the new maxima m' = max(m, their
// log-features), so every product is a small matmul:
//   a_i = exp(lq_i + m' - max_r(lq_ir + m'_r)),  E_j = exp(lk_j - m'),
//   out_i = (a_i C + sum_{visible j} (a_i . E_j) v_j) / (a_i . z + sum_{visible j} a_i . E_j).
// m' may come from a key that an early row of the chunk does not see; rebasing to it is
// safe while the first row has seen, in every feature, a log-feature within kRebaseSpan of
// m': the terms it then loses to underflow (below e^-87 of m') are below e^(kRebaseSpan-87)
// of one that row sees, as the per-key form guarantees e^-87. A chunk past that bound (keys
// of very different sizes, |k| ~ 1e2-1e3) runs the per-key form (AddKey / QueryRow).
constexpr float kRebaseSpan = 20.0f;
constexpr int64_t kChunk = 64;

struct Plan : Dims {
  int64_t T = kChunk, Tp = pad_to_state(2 * kChunk);  // pending keys: at most 2 chunks
  Plan(const Problem& p, const LogFeatures& f) : Dims(p, f) {}
};

// Per-worker scratch of a prefill task (Carve layout).
struct ChunkScratch {
  Slot st;         // c [Fp][Dvp], z [Fp], m [Fp]
  float* mnew;     // [Fp] m', then the state's rescaling factors
  float* first;    // [Fp] the maxima the chunk's first row has seen
  float* omega_t;  // [Dk][Fp] sqrt_scale * omega^T (rfa / performer)
  float* x;        // [Tp][Dk] input rows (rfa / performer)
  float* norm;     // [Tp] 0.5 sqrt_scale^2 |k_j|^2
  float* lk;       // [Tp][Fp] pending keys' log-features, then exp(lk - m')
  float* et;       // [Fp][Tp] exp(lk - m')^T, zero past the pending keys
  float* vb;       // [Tp][Dvp]
  float* aq;       // [T][Fp] query log-features, then the weights a
  float* s;        // [T][Tp]
  float* acc;      // [T][Dvp]
  float* den;      // [T]
  float* tmp;      // 2 Fp + Dvp (AddKey / QueryRow)
  float* wide;     // [1024] a widened bfloat16 row
  ChunkScratch(Carve& k, const Plan& n, bool projected)
      : st{k.take(n.Fp * n.Dvp), k.take(n.Fp), k.take(n.Fp)},
        mnew(k.take(n.Fp)),
        first(k.take(n.Fp)),
        omega_t(k.take(projected ? n.Dk * n.Fp : 0)),
        x(k.take(projected ? n.Tp * n.Dk : 0)),
        norm(k.take(n.Tp)),
        lk(k.take(n.Tp * n.Fp)),
        et(k.take(n.Fp * n.Tp)),
        vb(k.take(n.Tp * n.Dvp)),
        aq(k.take(n.T * n.Fp)),
        s(k.take(n.T * n.Tp)),
        acc(k.take(n.T * n.Dvp)),
        den(k.take(n.T)),
        tmp(k.take(2 * n.Fp + n.Dvp)),
        wide(k.take(1024)) {}
};

// Log-features of rows [r0, r0 + cnt) of head h of t into out [cnt][Fp] (-inf padding):
// the rows themselves (heinsen), or one matmul with omega^T less the keys' norm terms.
inline void LogFeatureRows(const ConstTensorView& t, const Plan& n, const LogFeatures& f, int64_t b,
                           int64_t r0, int64_t cnt, int64_t h, bool with_norm, ChunkScratch& sc,
                           float* HWY_RESTRICT out) {
  const LogChunkDF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t real = f.omega ? f.features : n.Dk;
  for (int64_t j = 0; j < cnt; ++j) {
    if (r0 + j + kPrefetchRows < t.shape[1])
      PrefetchRow(t.row_address(b, r0 + j + kPrefetchRows, h), t.shape[3] * dtype_size(t.dtype));
    const float* row = RowF32(t, b, r0 + j, h, sc.wide);
    if (f.omega == nullptr) {
      std::copy_n(row, n.Dk, out + j * n.Fp);
    } else {
      std::copy_n(row, n.Dk, sc.x + j * n.Dk);
      const float s = f.sqrt_scale;
      sc.norm[j] = with_norm ? 0.5f * s * s * Dot(row, row, n.Dk) : 0.0f;
    }
  }
  if (f.omega != nullptr) {
    MatMul(sc.x, n.Dk, sc.omega_t, n.Fp, out, n.Fp, cnt, n.Fp, n.Dk, /*accumulate=*/false);
    for (int64_t j = 0; j < cnt; ++j) {
      const auto norm = hn::Set(d, sc.norm[j]);
      for (int64_t r = 0; r < n.Fp; r += N)
        hn::StoreU(hn::Sub(hn::LoadU(d, out + j * n.Fp + r), norm), d, out + j * n.Fp + r);
    }
  }
  for (int64_t j = 0; j < cnt; ++j) std::fill(out + j * n.Fp + real, out + (j + 1) * n.Fp, kNegInf);
}

// Keys [j0, j0 + cnt) into sc.lk (log-features) and sc.vb (values).
inline void LoadKeys(const AttentionArgs& a, const Plan& n, const LogFeatures& f, int64_t b,
                     int64_t hk, int64_t j0, int64_t cnt, ChunkScratch& sc) {
  LogFeatureRows(a.k, n, f, b, j0, cnt, hk, /*with_norm=*/true, sc, sc.lk);
  for (int64_t j = 0; j < cnt; ++j) {
    if (j0 + j + kPrefetchRows < a.v.shape[1])
      PrefetchRow(a.v.row_address(b, j0 + j + kPrefetchRows, hk), n.Dv * dtype_size(a.v.dtype));
    CopyPadded(RowF32(a.v, b, j0 + j, hk, sc.wide), n.Dv, sc.vb + j * n.Dvp, n.Dvp);
  }
}

// out = max(m, the column maxima of sc.lk's first rows rows).
HWY_INLINE void ColumnMax(const Plan& n, const ChunkScratch& sc, int64_t rows, float* out) {
  const LogChunkDF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t r = 0; r < n.Fp; r += N) {
    auto m = hn::LoadU(d, sc.st.m + r);
    for (int64_t j = 0; j < rows; ++j) m = hn::Max(m, hn::LoadU(d, sc.lk + j * n.Fp + r));
    hn::StoreU(m, d, out + r);
  }
}

// e [cnt][Fp] = exp(lk - m) row by row (0 where lk or m is -inf: the padding; e may be lk).
inline void ExpRows(const Plan& n, const float* lk, const float* m, int64_t cnt, float* e) {
  const LogChunkDF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto neg_inf = hn::Set(d, kNegInf);
  for (int64_t j = 0; j < cnt; ++j)
    for (int64_t r = 0; r < n.Fp; r += N) {
      const auto x = hn::LoadU(d, lk + j * n.Fp + r), mv = hn::LoadU(d, m + r);
      const auto ex = hn::Exp(d, hn::Sub(x, mv));
      hn::StoreU(hn::IfThenZeroElse(hn::Or(hn::Eq(x, neg_inf), hn::Eq(mv, neg_inf)), ex), d,
                 e + j * n.Fp + r);
    }
}

// ExpRows, and et [Fp][Tp] its transpose, zero from column cnt to the next whole vector.
inline void Exponentiate(const Plan& n, const float* lk, const float* m, int64_t cnt, float* e,
                         float* et) {
  ExpRows(n, lk, m, cnt, e);
  Transpose(e, n.Fp, cnt, n.Fp, et, n.Tp);
  for (int64_t r = 0; r < n.Fp; ++r)
    std::fill(et + r * n.Tp + cnt, et + r * n.Tp + pad_to_state(cnt), 0.0f);
}

// Rescales the slot to the maxima in sc.mnew (m = m'), and exponentiates the cnt pending
// keys against them into sc.et (transposed, zero past cnt up to cols).
inline void Rebase(const Plan& n, int64_t cnt, ChunkScratch& sc) {
  const LogChunkDF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto one = hn::Set(d, 1.0f);
  float* scale = sc.mnew;  // m' is copied into m first, then overwritten with the factors
  for (int64_t r = 0; r < n.Fp; r += N) {
    const auto m = hn::LoadU(d, sc.st.m + r), nm = hn::LoadU(d, sc.mnew + r);
    // exp(m - m') is 1 when unchanged (also for -inf == -inf padding)
    hn::StoreU(hn::IfThenElse(hn::Eq(m, nm), one, hn::Exp(d, hn::Sub(m, nm))), d, scale + r);
    hn::StoreU(nm, d, sc.st.m + r);
    hn::StoreU(hn::Mul(hn::LoadU(d, sc.st.z + r), hn::LoadU(d, scale + r)), d, sc.st.z + r);
  }
  for (int64_t r = 0; r < n.Fp; ++r)
    if (scale[r] != 1.0f) Scale(scale[r], sc.st.c + r * n.Dvp, n.Dvp);
  Exponentiate(n, sc.lk, sc.st.m, cnt, sc.lk, sc.et);
}

// The cnt rebased keys in sc.et / sc.vb into the slot: z += E^T 1, c += E^T V.
HWY_INLINE void AddToSlot(const Plan& n, int64_t cnt, ChunkScratch& sc) {
  for (int64_t r = 0; r < n.Fp; ++r) sc.st.z[r] += WeightedSum(sc.et + r * n.Tp, nullptr, cnt);
  MatMul(sc.et, n.Tp, sc.vb, n.Dvp, sc.st.c, n.Dvp, n.Fp, n.Dvp, cnt, /*accumulate=*/true);
}

// Query log-features in sc.aq [rows][Fp] into weights a_i = exp(lq_i + m - c_i); den_i =
// a_i . z. Every row's c_i is finite: the caller has checked that m is.
inline void QueryWeights(const Plan& n, int64_t rows, ChunkScratch& sc) {
  const LogChunkDF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t i = 0; i < rows; ++i) {
    float* row = sc.aq + i * n.Fp;
    auto vmax = hn::Set(d, kNegInf);
    for (int64_t r = 0; r < n.Fp; r += N)
      vmax = hn::Max(vmax, hn::Add(hn::LoadU(d, row + r), hn::LoadU(d, sc.st.m + r)));
    const auto c = hn::Set(d, hn::GetLane(hn::MaxOfLanes(d, vmax)));
    for (int64_t r = 0; r < n.Fp; r += N) {
      const auto x = hn::Add(hn::LoadU(d, row + r), hn::LoadU(d, sc.st.m + r));
      hn::StoreU(hn::Exp(d, hn::Sub(x, c)), d, row + r);  // exp(-inf) = 0 on the padding
    }
    sc.den[i] = Dot(row, sc.st.z, n.Fp);
  }
}

// An empty slot: c, z zero, every maximum -inf.
inline void ResetSlot(const Plan& n, ChunkScratch& sc) {
  std::fill(sc.st.c, sc.st.c + n.Fp * n.Dvp, 0.0f);
  std::fill(sc.st.z, sc.st.z + n.Fp, 0.0f);
  std::fill(sc.st.m, sc.st.m + n.Fp, kNegInf);
}

// Keys [kdone, lo) that every row of a chunk with pending keys up to hi sees go into the
// slot in blocks of T while more than Tp are pending (a long causal offset, non-causal: as
// in linear.cpp); returns the new kdone (hi - kdone <= Tp after).
inline int64_t AddBulkKeys(const AttentionArgs& a, const Plan& n, const LogFeatures& f, int64_t b,
                           int64_t hk, int64_t lo, int64_t hi, int64_t kdone, ChunkScratch& sc) {
  while (hi - kdone > n.Tp) {
    const int64_t cnt = std::min(lo, kdone + n.T) - kdone;
    LoadKeys(a, n, f, b, hk, kdone, cnt, sc);
    ColumnMax(n, sc, cnt, sc.mnew);
    Rebase(n, cnt, sc);
    AddToSlot(n, cnt, sc);
    kdone += cnt;
  }
  return kdone;
}

// sc.omega_t = sqrt_scale * omega^T for one kv head's omega [features][Dk].
inline void TransposeOmega(const Plan& n, const LogFeatures& f, const float* omega,
                           ChunkScratch& sc) {
  std::fill(sc.omega_t, sc.omega_t + n.Dk * n.Fp, 0.0f);
  for (int64_t r = 0; r < f.features; ++r)
    for (int64_t x = 0; x < n.Dk; ++x)
      sc.omega_t[x * n.Fp + r] = f.sqrt_scale * omega[r * n.Dk + x];
}

// sc.acc = A C + S V and sc.den += the rows of S, for a chunk's query weights A in sc.aq
// against the rebased slot and its cnt pending keys from kdone: S = A E^T (sc.s), zero
// where row i0 + i does not see the key.
inline void ChunkOutputs(const Plan& n, int64_t b, int64_t i0, int64_t rows, int64_t kdone,
                         int64_t cnt, ChunkScratch& sc) {
  MatMul(sc.aq, n.Fp, sc.st.c, n.Dvp, sc.acc, n.Dvp, rows, n.Dvp, n.Fp, /*accumulate=*/false);
  if (cnt == 0) return;
  const int64_t cols = pad_to_state(cnt);
  MatMul(sc.aq, n.Fp, sc.et, n.Tp, sc.s, n.Tp, rows, cols, n.Fp, /*accumulate=*/false);
  for (int64_t i = 0; i < rows; ++i)
    sc.den[i] += MaskRow(sc.s + i * n.Tp, nullptr, n.keys(b, i0 + i).end - kdone, cols);
  MatMul(sc.s, n.Tp, sc.vb, n.Dvp, sc.acc, n.Dvp, rows, n.Dvp, cnt, /*accumulate=*/true);
}

// Whether the chunk may be rebased to sc.mnew: the first row, which has seen the slot and
// keys [kdone, lo), has seen a log-feature within kRebaseSpan of it in every real feature
// (false also when it has seen none).
inline bool RebaseIsExact(const Plan& n, const LogFeatures& f, int64_t lo, int64_t kdone,
                          ChunkScratch& sc) {
  ColumnMax(n, sc, std::max<int64_t>(lo - kdone, 0), sc.first);
  const int64_t real = f.omega ? f.features : n.Dk;
  for (int64_t r = 0; r < real; ++r)
    if (!(sc.mnew[r] - sc.first[r] <= kRebaseSpan)) return false;
  return true;
}

// A chunk's pending keys [kdone, kdone + cnt) and query rows [i0, i0 + rows) of head h
// loaded (log-features in sc.lk, sc.aq), then, where RebaseIsExact holds, the slot and keys
// rebased and the query weights made (returns true); otherwise both stay log-features.
inline bool PrepareChunk(const AttentionArgs& a, const Plan& n, const LogFeatures& f, int64_t b,
                         int64_t h, int64_t i0, int64_t rows, int64_t lo, int64_t kdone,
                         int64_t cnt, ChunkScratch& sc) {
  LoadKeys(a, n, f, b, h / (n.Hq / n.Hk), kdone, cnt, sc);
  LogFeatureRows(a.q, n, f, b, i0, rows, h, /*with_norm=*/false, sc, sc.aq);
  ColumnMax(n, sc, cnt, sc.mnew);
  if (!RebaseIsExact(n, f, lo, kdone, sc)) return false;
  Rebase(n, cnt, sc);
  QueryWeights(n, rows, sc);
  return true;
}

}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#endif  // ATTNKIT_CPU_OPS_LOG_CHUNKS_INL_H_
