// Exact softmax attention: a tiled online-softmax ("flash") kernel for CPUs.
//
// Plan (per call):
//  1. Pack keys transposed per key block ([D][kKeyBlock], zero padded) and values with
//     their head dim padded to whole vectors, once per (batch, kv head). O(N) memory.
//  2. One task per (batch, q head, block of kQueryBlock queries). A task streams key
//     blocks: S = Q K^T in a register tile (rows x 2 vectors of keys), masks the block
//     edge, updates running max m and sum l per row, rescales its O rows and adds P V
//     (rows x up to 4 vectors of the head dim). A task visits only the key blocks its rows'
//     ranges (Problem::keys: padding, causal, window) touch; softcap, ALiBi and attn_mask
//     are applied to the visible scores of a block (Problem::bias_row).
//  3. out = O / l, lse = m + log l; a row that saw no key gives zeros and lse = -inf.
// Every output row is owned by one task, so results do not depend on the thread count.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/softmax.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on
#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "src/cpu/arena.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/exp2-inl.h"
#include "src/cpu/ops/matmul-inl.h"
#include "src/cpu/tiles.hpp"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
// Internal linkage: each target's helpers (Plan, Buffers, ...) stay in this file (the
// HWY_EXPORT tables below name the entry points through the enclosing namespace).
namespace {
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

constexpr int64_t kKeyBlock = 128;    // keys per block: a multiple of 2 vectors on every target
constexpr int64_t kQueryBlock = 128;  // queries per task
#if HWY_TARGET <= HWY_AVX3
constexpr int kScoreRows = 8;  // 8 x 2 accumulators of 32 zmm registers
#else
constexpr int kScoreRows = 4;
#endif

// s[r][j..j+2N) = q[r] . kt[:, j..j+2N) for R rows.
//   q: [R][ldq] (scaled), kt: [dk][kKeyBlock], s: [R][kKeyBlock]
template <int R>
HWY_INLINE void ScoreTile(const float* HWY_RESTRICT q, int64_t ldq, const float* HWY_RESTRICT kt,
                          int64_t dk, int64_t j, float* HWY_RESTRICT s) {
  const DF d;
  const size_t N = hn::Lanes(d);
  VF acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = hn::Zero(d);
  for (int64_t c = 0; c < dk; ++c) {
    const VF k0 = hn::Load(d, kt + c * kKeyBlock + j);
    const VF k1 = hn::Load(d, kt + c * kKeyBlock + j + N);
    for (int r = 0; r < R; ++r) {
      const VF qb = hn::Set(d, q[r * ldq + c]);
      acc0[r] = hn::MulAdd(qb, k0, acc0[r]);
      acc1[r] = hn::MulAdd(qb, k1, acc1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    hn::Store(acc0[r], d, s + r * kKeyBlock + j);
    hn::Store(acc1[r], d, s + r * kKeyBlock + j + N);
  }
}

template <int R>
HWY_INLINE void ScoreRows(const float* q, int64_t ldq, const float* kt, int64_t dk, int64_t keys,
                          float* s) {
  const int64_t step = 2 * static_cast<int64_t>(hn::Lanes(DF()));
  for (int64_t j = 0; j < keys; j += step) ScoreTile<R>(q, ldq, kt, dk, j, s);
}

// S = Q K^T for `rows` rows (any count) over `keys` keys (a multiple of 2 vectors).
HWY_INLINE void Scores(const float* q, int64_t ldq, int64_t rows, const float* kt, int64_t dk,
                       int64_t keys, float* s) {
  int64_t r = 0;
  for (; r + kScoreRows <= rows; r += kScoreRows) {
    ScoreRows<kScoreRows>(q + r * ldq, ldq, kt, dk, keys, s + r * kKeyBlock);
  }
  for (; r < rows; ++r) ScoreRows<1>(q + r * ldq, ldq, kt, dk, keys, s + r * kKeyBlock);
}

// One row of the online softmax over a key block of `keys` scores (a multiple of N), of
// which [begin, end) count, in log2 units: x = c s (c = 1 when q carries scale log2(e), and
// log2(e) when logit masks needed s in natural units); m is the row's running max of x, l
// its sum of 2^(x - m). Turns s into P in place; updates m, l; rescales o.
HWY_INLINE void OnlineSoftmaxRow(float* HWY_RESTRICT s, int64_t keys, int64_t begin, int64_t end,
                                 float c, float& m, float& l, float* HWY_RESTRICT o, int64_t dvp) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < std::min(begin, keys); ++j) s[j] = kNegInf;
  for (int64_t j = std::max<int64_t>(end, 0); j < keys; ++j) s[j] = kNegInf;
  VF vmax = hn::Set(d, kNegInf);
  for (int64_t j = 0; j < keys; j += N) vmax = hn::Max(vmax, hn::Load(d, s + j));
  const float m_new = std::max(m, c * hn::GetLane(hn::MaxOfLanes(d, vmax)));
  if (m_new == kNegInf) {  // nothing visible yet: P = 0, O and l stay 0
    std::fill(s, s + keys, 0.0f);
    return;
  }
  const VF vm = hn::Set(d, m_new), vc = hn::Set(d, c);
  VF vsum = hn::Zero(d);
  for (int64_t j = 0; j < keys; j += N) {
    const VF p = Exp2(d, hn::MulSub(hn::Load(d, s + j), vc, vm));
    hn::Store(p, d, s + j);
    vsum = hn::Add(vsum, p);
  }
  const float alpha = std::exp2(m - m_new);  // 0 when m was -inf
  if (alpha != 1.0f) {
    const VF va = hn::Set(d, alpha);
    for (int64_t c = 0; c < dvp; c += N) hn::Store(hn::Mul(va, hn::Load(d, o + c)), d, o + c);
  }
  l = l * alpha + hn::GetLane(hn::SumOfLanes(d, vsum));
  m = m_new;
}

// The problem plus this kernel's blocking and packed operands.
struct Plan : Problem {
  int64_t Dvp, key_blocks, query_blocks;
  float fscale;  // scale as float
  // q is pre-scaled by qscale = fscale log2(e), or fscale when logit masks need natural units
  // (then the rows multiply by log2_c = log2(e)).
  float qscale, log2_c;
  bool bf16_dot;  // bfloat16 inputs on an AVX512-BF16 CPU: kt holds uint32 pairs
  int64_t pairs;  // (Dk + 1) / 2
  // Floats of one key block of kt and vp: kt [Dk][kKeyBlock] (bf16_dot: uint32
  // [pairs][kKeyBlock]), vp [kKeyBlock][Dvp].
  int64_t kt_block, vp_block;
  float* kt;  // [B][Hk][key_blocks][kt_block]
  float* vp;  // [B][Hk][key_blocks][vp_block]
  float* kt_head(int64_t b, int64_t hk) const { return kt + (b * Hk + hk) * key_blocks * kt_block; }
  float* vp_head(int64_t b, int64_t hk) const { return vp + (b * Hk + hk) * key_blocks * vp_block; }
};

// Pairs of bfloat16 (x[2i] low, x[2i+1] high) of a row of n into dst[i * stride], the
// operand layout of VDPBF16PS; an odd n is padded with zero.
inline void PackPairs(const uint16_t* x, int64_t n, uint32_t* dst, int64_t stride) {
  for (int64_t i = 0; 2 * i < n; ++i) {
    const uint32_t hi = 2 * i + 1 < n ? x[2 * i + 1] : 0;
    dst[i * stride] = static_cast<uint32_t>(x[2 * i]) | (hi << 16);
  }
}

void PackKv(const AttentionArgs& a, const Plan& p, Context& ctx) {
  ctx.parallel_for(p.B * p.Hk * p.key_blocks, [&](int64_t task, int) {
    const int64_t kb = task % p.key_blocks, bh = task / p.key_blocks;
    const int64_t b = bh / p.Hk, hk = bh % p.Hk;
    float* kt = p.kt_head(b, hk) + kb * p.kt_block;
    float* vp = p.vp_head(b, hk) + kb * p.vp_block;
    float wide[1024];  // a bfloat16 row widened (head dims are validated <= 1024)
    for (int64_t j = 0; j < kKeyBlock; ++j) {
      const int64_t key = kb * kKeyBlock + j;
      float* vrow = vp + j * p.Dvp;
      if (key < p.Sk && p.bf16_dot) {
        PackPairs(static_cast<const uint16_t*>(a.k.row_address(b, key, hk)), p.Dk,
                  reinterpret_cast<uint32_t*>(kt) + j, kKeyBlock);
      } else if (key < p.Sk) {
        const float* k = RowF32(a.k, b, key, hk, wide);
        for (int64_t c = 0; c < p.Dk; ++c) kt[c * kKeyBlock + j] = k[c];
      }
      if (key < p.Sk) {
        const float* v = RowF32(a.v, b, key, hk, wide);
        std::copy_n(v, p.Dv, vrow);
        std::fill(vrow + p.Dv, vrow + p.Dvp, 0.0f);
      } else {
        for (int64_t c = 0; c < p.kt_block / kKeyBlock; ++c) kt[c * kKeyBlock + j] = 0.0f;
        std::fill(vrow, vrow + p.Dvp, 0.0f);
      }
    }
  });
}

// Per-worker scratch of a task (Carve layout): scaled queries, scores, output rows and the
// running max and sum of each row.
struct TaskScratch {
  int64_t ldq;
  float *q, *s, *o, *m, *l;  // [kQueryBlock][ldq], [..][kKeyBlock], [..][Dvp], [..], [..]
  TaskScratch(Carve& c, const Plan& p)
      : ldq(RoundUp(p.Dk, 16)),
        q(c.take(kQueryBlock * ldq)),
        s(c.take(kQueryBlock * kKeyBlock)),
        o(c.take(kQueryBlock * p.Dvp)),
        m(c.take(kQueryBlock)),
        l(c.take(kQueryBlock)) {}
};

// Packed operands shared by the tasks (Carve layout, one block per call).
struct Packed {
  float *kt, *vp;
  Packed(Carve& c, const Plan& p)
      : kt(c.take(p.B * p.Hk * p.key_blocks * p.kt_block)),
        vp(c.take(p.B * p.Hk * p.key_blocks * p.vp_block)) {}
};

// Softcap, ALiBi, attn_mask on the visible keys of row i (its range `visible`) in the key
// block at j0 of `keys` scores sr (scaled logits).
inline void BiasRow(const Plan& p, int64_t b, int64_t h, int64_t i, KeyRange visible, int64_t j0,
                    int64_t keys, float* sr) {
  const int64_t from = std::max<int64_t>(visible.begin - j0, 0);
  const int64_t to = std::min(visible.end - j0, keys);
  if (from < to) p.bias_row(b, h, i, j0 + from, sr + from, to - from);
}

void AttendQueryBlock(const AttentionArgs& a, const Plan& p, int64_t task, float* scratch) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t qb = task % p.query_blocks, bh = task / p.query_blocks;
  const int64_t b = bh / p.Hq, h = bh % p.Hq, hk = p.kv_head(h);
  const int64_t i0 = qb * kQueryBlock, rows = std::min(kQueryBlock, p.Sq - i0);
  Carve carve(scratch);
  const TaskScratch w(carve, p);
  const int64_t ldq = w.ldq;
  float *q = w.q, *s = w.s, *o = w.o, *m = w.m, *l = w.l;
  KeyRange visible[kQueryBlock];
  for (int64_t r = 0; r < rows; ++r) {
    if (p.bf16_dot) {  // unscaled pairs; the scale is applied to the scores
      PackPairs(static_cast<const uint16_t*>(a.q.row_address(b, i0 + r, h)), p.Dk,
                reinterpret_cast<uint32_t*>(q) + r * ldq, 1);
    } else {
      const float* src = RowF32(a.q, b, i0 + r, h, q + r * ldq);  // widened in place if bf16
      for (int64_t c = 0; c < p.Dk; ++c) q[r * ldq + c] = src[c] * p.qscale;
    }
    visible[r] = p.keys(b, i0 + r);
    m[r] = -std::numeric_limits<float>::infinity();
    l[r] = 0.0f;
  }
  std::fill(o, o + rows * p.Dvp, 0.0f);
  // Bounds are monotone in the row: key blocks outside [first begin, last end) are skipped
  // (a sliding window costs N x window, not N^2).
  const int64_t lo = visible[0].begin, hi = visible[rows - 1].end;
  const float* kt = p.kt_head(b, hk);
  const float* vp = p.vp_head(b, hk);
  const bool biased = p.biased();
  for (int64_t j0 = lo / kKeyBlock * kKeyBlock; j0 < hi; j0 += kKeyBlock) {
    const int64_t keys = std::min(kKeyBlock, RoundUp(hi - j0, 2 * N));
    const float* ktb = kt + (j0 / kKeyBlock) * p.kt_block;
    if (p.bf16_dot) {
      bf16::scores(reinterpret_cast<const uint32_t*>(q), ldq, rows,
                   reinterpret_cast<const uint32_t*>(ktb), p.pairs, kKeyBlock, keys, s, kKeyBlock);
      for (int64_t r = 0; r < rows; ++r) Scale(p.qscale, s + r * kKeyBlock, keys);
    } else {
      Scores(q, ldq, rows, ktb, p.Dk, keys, s);
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = s + r * kKeyBlock;
      if (biased) BiasRow(p, b, h, i0 + r, visible[r], j0, keys, sr);
      OnlineSoftmaxRow(sr, keys, visible[r].begin - j0, visible[r].end - j0, p.log2_c, m[r], l[r],
                       o + r * p.Dvp, p.Dvp);
    }
    // O += P V over the keys visible to some row (P is 0 outside each row's own range).
    MatMul(s, kKeyBlock, vp + j0 * p.Dvp, p.Dvp, o, p.Dvp, rows, p.Dvp, std::min(keys, hi - j0),
           /*accumulate=*/true);
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = a.out.row<float>(b, i0 + r, h);
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    for (int64_t c = 0; c < p.Dv; ++c) dst[c] = o[r * p.Dvp + c] * inv;
    if (a.lse.present()) {
      a.lse.at<float>(b, h, i0 + r) = l[r] > 0.0f
                                          ? m[r] * static_cast<float>(M_LN2) + std::log(l[r])
                                          : -std::numeric_limits<float>::infinity();
    }
  }
}

void SoftmaxForward(const AttentionArgs& a, const Problem& problem, Context& ctx) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  Plan p;
  static_cast<Problem&>(p) = problem;
  const bool bf16 = a.q.dtype == DType::kBF16;
  const tiles::Bf16Path path = tiles::bf16_path();
  if (bf16 && tiles::on_tiles(path)) {
    softmax_tiles_forward(a, problem, path, ctx);
    return;
  }
  // The bf16 dot tiles cover 32 keys: only with 16-lane vectors (AVX-512), as kKeyBlock assumes.
  p.bf16_dot = bf16 && path == tiles::Bf16Path::kDot && N == 16;
  p.Dvp = RoundUp(p.Dv, N);
  p.pairs = (p.Dk + 1) / 2;
  p.kt_block = kKeyBlock * (p.bf16_dot ? p.pairs : p.Dk);
  p.vp_block = kKeyBlock * p.Dvp;
  p.key_blocks = std::max<int64_t>(1, hwy::DivCeil(p.Sk, kKeyBlock));
  p.query_blocks = hwy::DivCeil(p.Sq, kQueryBlock);
  p.fscale = static_cast<float>(p.scale);
  p.qscale = p.biased() ? p.fscale : p.fscale * static_cast<float>(M_LOG2E);
  p.log2_c = p.biased() ? static_cast<float>(M_LOG2E) : 1.0f;
  Carve shared(ctx.shared_scratch(Carve::floats<Packed>(p)));
  const Packed packed(shared, p);
  p.kt = packed.kt;
  p.vp = packed.vp;
  PackKv(a, p, ctx);
  ctx.reserve_scratch(Carve::floats<TaskScratch>(p));
  ctx.parallel_for(p.B * p.Hq * p.query_blocks, [&](int64_t task, int worker) {
    AttendQueryBlock(a, p, task, ctx.scratch(worker));
  });
}

// w[j] = q . k_(j0 + j) for j < n (row (b, ., hk) of k): four keys at a time, so that four
// dot products and their lane sums are in flight.
HWY_INLINE void DecodeScores(const float* HWY_RESTRICT q, const ConstTensorView& k, int64_t b,
                             int64_t hk, int64_t j0, int64_t n, float* HWY_RESTRICT w) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d)), dk = k.shape[3], full = dk / N * N;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float* k0 = k.row<const float>(b, j0 + j, hk);
    const float* k1 = k.row<const float>(b, j0 + j + 1, hk);
    const float* k2 = k.row<const float>(b, j0 + j + 2, hk);
    const float* k3 = k.row<const float>(b, j0 + j + 3, hk);
    VF a0 = hn::Zero(d), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t x = 0; x < full; x += N) {
      const VF qx = hn::LoadU(d, q + x);
      a0 = hn::MulAdd(qx, hn::LoadU(d, k0 + x), a0);
      a1 = hn::MulAdd(qx, hn::LoadU(d, k1 + x), a1);
      a2 = hn::MulAdd(qx, hn::LoadU(d, k2 + x), a2);
      a3 = hn::MulAdd(qx, hn::LoadU(d, k3 + x), a3);
    }
    float s0 = hn::GetLane(hn::SumOfLanes(d, a0)), s1 = hn::GetLane(hn::SumOfLanes(d, a1));
    float s2 = hn::GetLane(hn::SumOfLanes(d, a2)), s3 = hn::GetLane(hn::SumOfLanes(d, a3));
    for (int64_t x = full; x < dk; ++x) {
      s0 += q[x] * k0[x], s1 += q[x] * k1[x], s2 += q[x] * k2[x], s3 += q[x] * k3[x];
    }
    w[j] = s0, w[j + 1] = s1, w[j + 2] = s2, w[j + 3] = s3;
  }
  for (; j < n; ++j) w[j] = Dot(q, k.row<const float>(b, j0 + j, hk), dk);
}

// o[0:Dv) += sum_j p[j] v_(j0 + j) over NV vectors of dims from x0, in registers (two sets,
// even and odd keys, so consecutive keys' multiply-adds do not wait on each other).
template <int NV>
HWY_INLINE void DecodeValueChunk(const float* HWY_RESTRICT p, const ConstTensorView& v, int64_t b,
                                 int64_t hk, int64_t j0, int64_t n, int64_t x0,
                                 float* HWY_RESTRICT o) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  VF e[NV], f[NV];
  for (int i = 0; i < NV; ++i) e[i] = f[i] = hn::Zero(d);
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const float* v0 = v.row<const float>(b, j0 + j, hk) + x0;
    const float* v1 = v.row<const float>(b, j0 + j + 1, hk) + x0;
    const VF p0 = hn::Set(d, p[j]), p1 = hn::Set(d, p[j + 1]);
    for (int i = 0; i < NV; ++i) {
      e[i] = hn::MulAdd(p0, hn::LoadU(d, v0 + i * N), e[i]);
      f[i] = hn::MulAdd(p1, hn::LoadU(d, v1 + i * N), f[i]);
    }
  }
  if (j < n) {
    const float* v0 = v.row<const float>(b, j0 + j, hk) + x0;
    const VF p0 = hn::Set(d, p[j]);
    for (int i = 0; i < NV; ++i) e[i] = hn::MulAdd(p0, hn::LoadU(d, v0 + i * N), e[i]);
  }
  for (int i = 0; i < NV; ++i) {
    float* oi = o + x0 + i * N;
    hn::StoreU(hn::Add(hn::LoadU(d, oi), hn::Add(e[i], f[i])), d, oi);
  }
}

// o[0:Dv) += sum_{j < n} p[j] v_(j0 + j): whole vectors four at a time in registers, the
// last dims (Dv not a multiple of the lanes) one by one.
HWY_INLINE void DecodeValues(const float* HWY_RESTRICT p, const ConstTensorView& v, int64_t b,
                             int64_t hk, int64_t j0, int64_t n, float* HWY_RESTRICT o) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF())), dv = v.shape[3];
  int64_t x0 = 0;
  for (; x0 + 4 * N <= dv; x0 += 4 * N) DecodeValueChunk<4>(p, v, b, hk, j0, n, x0, o);
  const int64_t left = (dv - x0) / N;
  if (left == 3) DecodeValueChunk<3>(p, v, b, hk, j0, n, x0, o);
  if (left == 2) DecodeValueChunk<2>(p, v, b, hk, j0, n, x0, o);
  if (left == 1) DecodeValueChunk<1>(p, v, b, hk, j0, n, x0, o);
  for (int64_t x = x0 + left * N; x < dv; ++x) {
    for (int64_t j = 0; j < n; ++j) o[x] += p[j] * v.row<const float>(b, j0 + j, hk)[x];
  }
}

// One head's online softmax over a block of n scores w (log2 units; padded in place to whole
// vectors), P V added to o; m, l its running max and sum.
HWY_INLINE void DecodeBlock(float* HWY_RESTRICT w, int64_t n, const ConstTensorView& v, int64_t b,
                            int64_t hk, int64_t jb, float& m, float& l, float* HWY_RESTRICT o,
                            int64_t dvp) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  std::fill(w + n, w + RoundUp(n, N), -std::numeric_limits<float>::infinity());
  auto vmax = hn::Set(d, -std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < n; j += N) vmax = hn::Max(vmax, hn::Load(d, w + j));
  const float nm = std::max(m, hn::GetLane(hn::MaxOfLanes(d, vmax)));
  const float alpha = std::exp2(m - nm);  // 0 when m was -inf
  if (alpha != 1.0f) Scale(alpha, o, dvp);
  const auto vm = hn::Set(d, nm);
  auto vsum = hn::Zero(d);
  for (int64_t j = 0; j < n; j += N) {
    const auto pj = Exp2(d, hn::Sub(hn::Load(d, w + j), vm));
    hn::Store(pj, d, w + j);
    vsum = hn::Add(vsum, pj);
  }
  l = l * alpha + hn::GetLane(hn::SumOfLanes(d, vsum));
  DecodeValues(w, v, b, hk, jb, n, o);
  m = nm;
}

// Decode: few queries against a long KV cache. Memory-bound, so no packing: each task
// streams one split of kDecodeSplit keys of one (batch, q head) straight from the cache,
// keeping (max, sum, partial output); splits are merged in a fixed order afterwards, so
// the result does not depend on the thread count. (A task per split over every head, which
// reads the cache's rows in order, measured slower: 1.3x at 1k keys, 1.15x at 100k.)
constexpr int64_t kDecodeSplit = 2048;
constexpr int64_t kDecodeBlock = 256;

void SoftmaxDecode(const AttentionArgs& a, const Problem& p, Context& ctx) {
  const float scale = static_cast<float>(p.scale * M_LOG2E);  // scores in log2 units
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t B = a.q.shape[0], Tq = a.q.shape[1], Hq = a.q.shape[2], Dk = a.q.shape[3];
  const int64_t Sk = a.k.shape[1], Hk = a.k.shape[2], Dv = a.v.shape[3], Dvp = RoundUp(Dv, N);
  const int64_t splits = std::max<int64_t>(1, hwy::DivCeil(Sk, kDecodeSplit));
  const int64_t part = Dvp + 2;  // partial output, max, sum
  float* partials = ctx.shared_scratch(static_cast<size_t>(B * Tq * Hq * splits * part));
  // Per worker: the block's scores, the partial output and the scaled query.
  struct Scratch {
    float *w, *o, *q;
    Scratch(Carve& c, int64_t dvp, int64_t dk)
        : w(c.take(kDecodeBlock)), o(c.take(dvp)), q(c.take(dk)) {}
  };
  ctx.reserve_scratch(Carve::floats<Scratch>(Dvp, Dk));
  ctx.parallel_for(
      B * Tq * Hq * splits,
      [&](int64_t task, int worker) {
        const int64_t sp = task % splits, row = task / splits;
        const int64_t h = row % Hq, t = (row / Hq) % Tq, b = row / (Hq * Tq), hk = h / (Hq / Hk);
        // The split's share of the row's keys (padding, causal position, window).
        const KeyRange r = p.keys(b, t);
        const int64_t j0 = std::max(r.begin, sp * kDecodeSplit);
        const int64_t j1 = std::min({r.end, Sk, (sp + 1) * kDecodeSplit});
        Carve carve(ctx.scratch(worker));
        const Scratch sc(carve, Dvp, Dk);
        const float* qsrc = a.q.row<const float>(b, t, h);
        for (int64_t x = 0; x < Dk; ++x) sc.q[x] = qsrc[x] * scale;
        std::fill(sc.o, sc.o + Dvp, 0.0f);
        float m = -std::numeric_limits<float>::infinity(), l = 0.0f;
        for (int64_t jb = j0; jb < j1; jb += kDecodeBlock) {
          const int64_t n = std::min(kDecodeBlock, j1 - jb);
          DecodeScores(sc.q, a.k, b, hk, jb, n, sc.w);
          DecodeBlock(sc.w, n, a.v, b, hk, jb, m, l, sc.o, Dvp);
        }
        float* dst = partials + task * part;
        std::copy_n(sc.o, Dvp, dst);
        dst[Dvp] = m;
        dst[Dvp + 1] = l;
      },
      4.0 * B * Tq * Hq * Sk * (Dk + Dv));
  // Merge the splits of each row in order.
  for (int64_t row = 0; row < B * Tq * Hq; ++row) {
    const int64_t h = row % Hq, t = (row / Hq) % Tq, b = row / (Hq * Tq);
    const float* p0 = partials + row * splits * part;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t sp = 0; sp < splits; ++sp) m = std::max(m, p0[sp * part + Dvp]);
    float* dst = a.out.row<float>(b, t, h);
    std::fill(dst, dst + Dv, 0.0f);
    if (m == -std::numeric_limits<float>::infinity()) continue;
    float l = 0;
    for (int64_t sp = 0; sp < splits; ++sp) {
      const float* p = p0 + sp * part;
      const float f = std::exp2(p[Dvp] - m);
      l += f * p[Dvp + 1];
      for (int64_t x = 0; x < Dv; ++x) dst[x] += f * p[x];
    }
    for (int64_t x = 0; x < Dv; ++x) dst[x] /= l;
  }
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(SoftmaxForward);
HWY_EXPORT(SoftmaxDecode);

void softmax_decode(const AttentionArgs& a, const Problem& p, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(SoftmaxDecode)(a, p, ctx);
}

void softmax_forward(const AttentionArgs& a, const Problem& p, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(SoftmaxForward)(a, p, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
