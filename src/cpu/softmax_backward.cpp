// Exact softmax attention backward, float32, tiled (FlashAttention-2 style), deterministic.
//   0. lse per row (the forward's when given, else a forward pass); D_i = dout_i . out_i.
//   1. Q, K and dout are packed once per head row-major and transposed, V row-major, head
//      dims padded to kStatePad, so every product is a register-tiled matmul.
//   2. A task per (batch, kv head, key partition) walks its blocks of 64 keys and, per
//      block, the group's query blocks of 128: P^T = exp(s K Q^T - lse), dv += P^T dout,
//      dP^T = V dout^T, dS^T = s P^T (dP^T - D), dk += dS^T Q, dq^T += K^T dS^T: the five
//      products of FlashAttention-2's backward, each once.
//   3. dq sums the partitions' dq^T in a fixed order.
// dk, dv rows are owned by one task; dq is split into a fixed number of partitions (not one
// per thread), so results do not depend on the thread count.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/softmax_backward.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on
#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "src/cpu/arena.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/exp2-inl.h"
#include "src/cpu/ops/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
// Internal linkage: each target's helpers (Plan, Buffers, ...) stay in this file (the
// HWY_EXPORT tables below name the entry points through the enclosing namespace).
namespace {

constexpr int64_t kRowBlock = 64;   // rows a task owns
constexpr int64_t kColBlock = 128;  // the other side's block
constexpr int64_t kPartitions = 4;  // fixed key partitions, each with its own dq^T sums

// Row-major [n][ldr] and transposed [dim][ldt] copies of rows 0..n of (b, ., h) of a
// float32 or bfloat16 (widened) view.
// The transpose goes 16 rows at a time from the fresh row copies, so each store run is a
// whole cache line instead of one float per column (a column stride of ldt floats touches
// a new page per element at long sequences).
void PackBoth(const ConstTensorView& t, int64_t b, int64_t h, int64_t n, int64_t dim, float* rows,
              int64_t ldr, float* cols, int64_t ldt) {
  constexpr int64_t kBlock = 16;
  std::vector<float> wide(dim);
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = std::min(n, i0 + kBlock);
    for (int64_t i = i0; i < i1; ++i)
      CopyPadded(RowF32(t, b, i, h, wide.data()), dim, rows + i * ldr, ldr);
    for (int64_t c = 0; c < dim; ++c) {
      float* dst = cols + c * ldt;
      for (int64_t i = i0; i < i1; ++i) dst[i] = rows[i * ldr + c];
    }
  }
}

// dp[0:n) = scale * p * (dp - d[0:n)); n a multiple of the lanes.
HWY_INLINE void ScaledDiffProduct(const float* HWY_RESTRICT p, float* HWY_RESTRICT dp, int64_t n,
                                  float scale, const float* HWY_RESTRICT d) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto vs = hn::Set(df, scale);
  for (int64_t c = 0; c < n; c += N) {
    const auto x = hn::Sub(hn::LoadU(df, dp + c), hn::LoadU(df, d + c));
    hn::StoreU(hn::Mul(hn::Mul(vs, hn::LoadU(df, p + c)), x), df, dp + c);
  }
}

// One row of P^T in log2 units: x[c] = 2^(s2 x[c] - lse2[c]) for c in [from, to) (s2 the
// logit scale times log2(e), lse2 the row's lse times log2(e)), zero elsewhere in [0, cols)
// (cols a multiple of the lanes; lse2 readable up to cols).
HWY_INLINE void ColumnProbabilities(float* HWY_RESTRICT x, int64_t cols, int64_t from, int64_t to,
                                    float s2, const float* HWY_RESTRICT lse2) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto vs = hn::Set(d, s2);
  for (int64_t c = from - from % N; c < to; c += N)
    hn::StoreU(Exp2(d, hn::MulSub(vs, hn::LoadU(d, x + c), hn::LoadU(d, lse2 + c))), d, x + c);
  std::fill(x, x + std::min(from, cols), 0.0f);
  if (to < cols) std::fill(x + to, x + cols, 0.0f);
}

// ColumnProbabilities for a biased problem (softcap, ALiBi, attn_mask), scalar: x holds
// q_i . k_j for key j and queries i0 + c, turned into P with Problem's logit. slope[c] gets
// the softcap's derivative (when there is one), which dS is multiplied by.
void BiasedColumnProbabilities(const Problem& p, int64_t b, int64_t h, int64_t j, int64_t i0,
                               float* HWY_RESTRICT x, int64_t cols, int64_t from, int64_t to,
                               const float* HWY_RESTRICT lse2, float* HWY_RESTRICT slope) {
  const float s = static_cast<float>(p.scale);
  for (int64_t c = from; c < to; ++c) {
    float v = s * x[c];
    if (p.mask.softcap > 0) {
      v = p.softcapped(v);
      slope[c] = p.softcap_slope(v);
    }
    v = p.add_bias(b, h, i0 + c, j, v);
    x[c] = lse2[c] == -std::numeric_limits<float>::infinity()
               ? 0.0f
               : std::exp2(v * static_cast<float>(M_LOG2E) - lse2[c]);
  }
  std::fill(x, x + std::min(from, cols), 0.0f);
  if (to < cols) std::fill(x + to, x + cols, 0.0f);
}

// bfloat16 bits of float32 lanes (round to nearest even; finite values), in uint32 lanes.
template <class DU, class VU = hn::Vec<DU>>
HWY_INLINE VU Bf16Bits(DU du, VU u) {
  const VU even = hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u));
  return hn::ShiftRight<16>(hn::Add(u, hn::Add(hn::Set(du, 0x7FFFu), even)));
}

// The tile path's A operand: rows x cols (a multiple of the lanes) of src [rows][kColBlock]
// float32 as bfloat16 rows dst [rows][kColBlock].
HWY_INLINE void RowsToBf16(const float* HWY_RESTRICT src, int64_t rows, int64_t cols,
                           uint16_t* HWY_RESTRICT dst) {
  const hn::ScalableTag<float> d;
  const hn::RebindToUnsigned<decltype(d)> du;
  const hn::RebindToSigned<decltype(d)> di;
  const hn::Rebind<uint16_t, decltype(d)> d16;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; c += N) {
      const auto bits = Bf16Bits(du, hn::BitCast(du, hn::Load(d, src + r * kColBlock + c)));
      hn::Store(hn::DemoteTo(d16, hn::BitCast(di, bits)), d16, dst + r * kColBlock + c);
    }
}

// The tile path's B operand: pairs of rows of src [rows][kColBlock] float32 as bfloat16
// pairs dst [rows / 2][kColBlock] (row 2p in the low half, 2p + 1 in the high).
HWY_INLINE void RowPairsToBf16(const float* HWY_RESTRICT src, int64_t rows, int64_t cols,
                               uint32_t* HWY_RESTRICT dst) {
  const hn::ScalableTag<float> d;
  const hn::RebindToUnsigned<decltype(d)> du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t r = 0; r + 1 < rows; r += 2)
    for (int64_t c = 0; c < cols; c += N) {
      const auto lo = Bf16Bits(du, hn::BitCast(du, hn::Load(d, src + r * kColBlock + c)));
      const auto hi = Bf16Bits(du, hn::BitCast(du, hn::Load(d, src + (r + 1) * kColBlock + c)));
      hn::Store(hn::Or(lo, hn::ShiftLeft<16>(hi)), du, dst + r / 2 * kColBlock + c);
    }
}

// bfloat16 pairs of a [B, S, H, D] bfloat16 view's rows 0..n of (b, ., h), for the tiles:
//   PackDimPairs: dst [dim / 2][ld], pair p of dims of row i at [p][i];
//   PackRowPairs: dst [n / 2][ld], rows 2p (low half) and 2p + 1 (high) at [p][c], dim c.
// An odd dim or n leaves the last pair's high half zero; other padding stays as the caller
// zeroed it.
void PackDimPairs(const ConstTensorView& t, int64_t b, int64_t h, int64_t n, uint32_t* dst,
                  int64_t ld) {
  const int64_t dim = t.shape[3];
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t* x = static_cast<const uint16_t*>(t.row_address(b, i, h));
    for (int64_t c = 0; c + 1 < dim; c += 2)
      dst[c / 2 * ld + i] = x[c] | static_cast<uint32_t>(x[c + 1]) << 16;
    if (dim % 2) dst[dim / 2 * ld + i] = x[dim - 1];
  }
}
void PackRowPairs(const ConstTensorView& t, int64_t b, int64_t h, int64_t n, uint32_t* dst,
                  int64_t ld) {
  const int64_t dim = t.shape[3];
  for (int64_t i = 0; i < n; i += 2) {
    const uint16_t* x0 = static_cast<const uint16_t*>(t.row_address(b, i, h));
    const uint16_t* x1 =
        i + 1 < n ? static_cast<const uint16_t*>(t.row_address(b, i + 1, h)) : nullptr;
    uint32_t* row = dst + i / 2 * ld;
    for (int64_t c = 0; c < dim; ++c)
      row[c] = x0[c] | (x1 ? static_cast<uint32_t>(x1[c]) << 16 : 0u);
  }
}

// One softmax backward call, in named steps (Run). Its operands are one Carve layout
// (Buffers) in the Context's shared slot 1 (its forward pass uses slot 0).
struct SoftmaxBackwardCall {
  struct Side {
    const float *r, *t, *vr, *vt;  // K: Kr, Kt, Vr (no V^T); Q: Qr, Qt, dOr, dOt
  };

  const BackwardArgs& g;
  const AttentionArgs& a;
  const Problem& pr;
  // bfloat16 operands: the products on the tiles (tiles_backward_path()), K, V as bfloat16
  // rows and K^T, Q and dout as bfloat16 pairs (PackTiles), blocks padded to the tiles' 32.
  const bool on_tiles;
  const tiles::Bf16Path path;
  const int64_t B, Sq, Hq, Dk, Sk, Hk, Dv, Dkp, Dvp, Sqp, Skp, kside, qside, kblocks, parts;
  const float scale, scale2;  // the logit scale, and times log2(e)
  // The call's operands, zeroed (padding is read by whole vectors).
  struct Buffers {
    float* lse;         // [B][Hq][Sqp] row log-sum-exp, in log2 units (times log2(e))
    float* dsum;        // [B][Hq][Sqp] D = dout . out
    float* recomputed;  // [B][Sq][Hq][Dv] the forward's out, when lse is not given
    float* kpack;       // [B][Hk][kside]: Kr [Skp][Dkp], Kt [Dk][Skp], Vr [Skp][Dvp]
    float* qpack;  // [B][Hq][qside]: Qr [Sqp][Dkp], Qt [Dk][Sqp], dOr [Sqp][Dvp], dOt [Dv][Sqp]
    float* dqt;    // [B][Hq][parts][Dkp][Sqp] dq^T partial sums per key partition
    Buffers(Carve& c, const SoftmaxBackwardCall& k)
        : lse(c.take(k.B * k.Hq * k.Sqp)),
          dsum(c.take(k.B * k.Hq * k.Sqp)),
          recomputed(c.take(k.a.lse.present() ? 0 : k.B * k.Sq * k.Hq * k.Dv)),
          kpack(c.take(k.B * k.Hk * k.kside)),
          qpack(c.take(k.B * k.Hq * k.qside)),
          dqt(c.take(k.B * k.Hq * k.parts * k.Dkp * k.Sqp)) {}
  };
  float *lse = nullptr, *dsum = nullptr, *recomputed = nullptr, *kpack = nullptr, *qpack = nullptr,
        *dqt = nullptr;

  SoftmaxBackwardCall(const BackwardArgs& g_, const Problem& p)
      : g(g_),
        a(g_.forward),
        pr(p),
        on_tiles(g_.forward.q.dtype == DType::kBF16 && tiles_backward_path()),
        path(tiles::bf16_path()),
        B(p.B),
        Sq(p.Sq),
        Hq(p.Hq),
        Dk(p.Dk),
        Sk(p.Sk),
        Hk(p.Hk),
        Dv(p.Dv),
        Dkp(on_tiles ? RoundUp(Dk, 32) : pad_to_state(Dk)),
        Dvp(on_tiles ? RoundUp(Dv, 32) : pad_to_state(Dv)),
        Sqp(on_tiles ? RoundUp(std::max<int64_t>(Sq, 1), 32)
                     : pad_to_state(std::max<int64_t>(Sq, 1))),
        Skp(on_tiles ? RoundUp(std::max<int64_t>(Sk, 1), kRowBlock)
                     : pad_to_state(std::max<int64_t>(Sk, 1))),
        // tiles: bfloat16 Kr [Skp][Dkp], Kt [Dkp][Skp], Vr [Skp][Dvp]; uint32 pairs Q^T
        // [Dkp / 2][Sqp], Q [Sqp / 2][Dkp], dout [Sqp / 2][Dvp], dout^T [Dvp / 2][Sqp].
        kside(on_tiles ? Skp * Dkp + Skp * Dvp / 2 : Skp * Dkp + Dk * Skp + Skp * Dvp),
        qside(on_tiles ? Sqp * Dkp + Sqp * Dvp : Sqp * Dkp + Dk * Sqp + Sqp * Dvp + Dv * Sqp),
        kblocks(hwy::DivCeil(Sk, kRowBlock)),
        // Key block kb adds to dq^T partition kb % parts: a fixed split, so the sums do not
        // depend on the threads.
        parts(std::min<int64_t>(kPartitions, std::max<int64_t>(kblocks, 1))),
        scale(static_cast<float>(p.scale)),
        scale2(static_cast<float>(p.scale * M_LOG2E)) {}

  Side key_side(int64_t b, int64_t hk) const {
    const float* p = kpack + (b * Hk + hk) * kside;
    return Side{p, p + Skp * Dkp, p + Skp * Dkp + Dk * Skp, nullptr};
  }
  Side query_side(int64_t b, int64_t h) const {
    const float* p = qpack + (b * Hq + h) * qside;
    return Side{p, p + Sqp * Dkp, p + Sqp * Dkp + Dk * Sqp, p + Sqp * Dkp + Dk * Sqp + Sqp * Dvp};
  }
  float* dq_partial(int64_t b, int64_t h, int64_t part) const {
    return dqt + ((b * Hq + h) * parts + part) * Dkp * Sqp;
  }
  void Allocate(Context& ctx) {
    const size_t floats = Carve::floats<Buffers>(*this);
    float* block = ctx.shared_scratch(floats, /*slot=*/1);
    std::fill(block, block + floats, 0.0f);
    Carve c(block);
    const Buffers b(c, *this);
    lse = b.lse, dsum = b.dsum, recomputed = b.recomputed, kpack = b.kpack, qpack = b.qpack;
    dqt = b.dqt;
  }

  // 0. lse: the forward's when the caller kept it (AttentionArgs::lse), else from a forward
  // pass; D = dout . out with the matching out.
  void RowStatistics(Context& ctx) {
    ConstTensorView out = a.out;
    if (a.lse.present()) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < Hq; ++h)
          for (int64_t i = 0; i < Sq; ++i)
            lse[(b * Hq + h) * Sqp + i] = a.lse.at<const float>(b, h, i);
    } else {
      AttentionArgs f = a;
      f.out = make_view(recomputed, {B, Sq, Hq, Dv});
      f.lse = make_view(lse, {B, Hq, Sq});
      f.lse.stride = {Hq * Sqp, Sqp, 1, 0};
      softmax_forward(f, pr, ctx);
      out = f.out;
    }
    for (int64_t i = 0; i < B * Hq * Sqp; ++i) lse[i] *= static_cast<float>(M_LOG2E);  // log2
    std::vector<float> wide(2 * Dv);  // bfloat16 rows widened
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < Sq; ++i)
          dsum[(b * Hq + h) * Sqp + i] =
              Dot(RowF32(g.dout, b, i, h, wide.data()), RowF32(out, b, i, h, wide.data() + Dv), Dv);
  }

  // 1. Packed operands, one task per (batch, head) of either side.
  void Pack(Context& ctx) {
    ctx.parallel_for(B * (Hk + Hq), [&](int64_t task, int) {
      const int64_t b = task / (Hk + Hq), h = task % (Hk + Hq);
      if (on_tiles) {
        PackTiles(b, h);
      } else if (h < Hk) {
        float* p = kpack + (b * Hk + h) * kside;
        PackBoth(a.k, b, h, Sk, Dk, p, Dkp, p + Skp * Dkp, Skp);
        p += Skp * Dkp + Dk * Skp;
        std::vector<float> wide(Dv);
        for (int64_t j = 0; j < Sk; ++j)
          CopyPadded(RowF32(a.v, b, j, h, wide.data()), Dv, p + j * Dvp, Dvp);
      } else {
        float* p = qpack + (b * Hq + h - Hk) * qside;
        PackBoth(a.q, b, h - Hk, Sq, Dk, p, Dkp, p + Sqp * Dkp, Sqp);
        p += Sqp * Dkp + Dk * Sqp;
        PackBoth(g.dout, b, h - Hk, Sq, Dv, p, Dvp, p + Sqp * Dvp, Sqp);
      }
    });
  }

  // PackTiles' layouts (see on_tiles) of kv head h < Hk, or of query head h - Hk.
  void PackTiles(int64_t b, int64_t h) {
    if (h < Hk) {
      uint16_t* kr = reinterpret_cast<uint16_t*>(kpack + (b * Hk + h) * kside);
      uint16_t* kt = kr + Skp * Dkp;
      uint16_t* vr = kt + Dkp * Skp;
      for (int64_t j = 0; j < Sk; ++j) {
        const uint16_t* k = static_cast<const uint16_t*>(a.k.row_address(b, j, h));
        const uint16_t* v = static_cast<const uint16_t*>(a.v.row_address(b, j, h));
        std::copy_n(k, Dk, kr + j * Dkp);
        for (int64_t c = 0; c < Dk; ++c) kt[c * Skp + j] = k[c];
        std::copy_n(v, Dv, vr + j * Dvp);
      }
      return;
    }
    h -= Hk;
    uint32_t* qt = reinterpret_cast<uint32_t*>(qpack + (b * Hq + h) * qside);
    uint32_t* qr = qt + Dkp / 2 * Sqp;
    uint32_t* dor = qr + Sqp / 2 * Dkp;
    uint32_t* dot = dor + Sqp / 2 * Dvp;
    PackDimPairs(a.q, b, h, Sq, qt, Sqp);
    PackRowPairs(a.q, b, h, Sq, qr, Dkp);
    PackRowPairs(g.dout, b, h, Sq, dor, Dvp);
    PackDimPairs(g.dout, b, h, Sq, dot, Sqp);
  }

  // P^T for keys [j0, j0 + keys) and queries [i0, i0 + cols) of head h: each key's
  // queries are an interval [from, to) (both nondecreasing in the key).
  void Probabilities(int64_t b, int64_t h, int64_t j0, int64_t keys, int64_t i0, int64_t cols,
                     int64_t qrows, float* pt, float* slopes) const {
    const float* l = lse + (b * Hq + h) * Sqp + i0;
    int64_t from = 0, to = 0;
    for (int64_t j = 0; j < keys; ++j) {
      while (from < qrows && pr.keys(b, i0 + from).end <= j0 + j) ++from;
      to = std::max(to, from);
      while (to < qrows && pr.keys(b, i0 + to).begin <= j0 + j) ++to;
      if (pr.biased()) {
        BiasedColumnProbabilities(pr, b, h, j0 + j, i0, pt + j * kColBlock, cols, from, to, l,
                                  slopes + j * kColBlock);
      } else {
        ColumnProbabilities(pt + j * kColBlock, cols, from, to, scale2, l);
      }
    }
  }

  // 2. One key block of 64 against the query rows [first, last) that see some key of it,
  // for every query head of the group: P^T, dv += P^T dout, dP^T, dS^T, dk += dS^T Q and
  // dq^T += K^T dS^T. scratch: P^T, dP^T, slopes [kRowBlock][kColBlock], dk, dv.
  // Per-worker scratch of KeyBlock (and ReduceDq's [Dk][lanes], which fits in it).
  struct BlockScratch {
    float *pt, *dpt, *slopes;  // [kRowBlock][kColBlock]: P^T, dP^T then dS^T, softcap slopes
    float *dk, *dv;            // [kRowBlock][Dkp], [kRowBlock][Dvp] accumulators
    uint16_t *pt16, *ds16;     // tiles: P^T, dS^T as bfloat16 rows [kRowBlock][kColBlock]
    uint32_t* ds2;             // tiles: dS^T as bfloat16 pairs of keys [kRowBlock / 2][kColBlock]
    BlockScratch(Carve& c, int64_t dkp, int64_t dvp)
        : pt(c.take(kRowBlock * kColBlock)),
          dpt(c.take(kRowBlock * kColBlock)),
          slopes(c.take(kRowBlock * kColBlock)),
          dk(c.take(kRowBlock * dkp)),
          dv(c.take(kRowBlock * dvp)),
          pt16(reinterpret_cast<uint16_t*>(c.take(kRowBlock * kColBlock / 2))),
          ds16(reinterpret_cast<uint16_t*>(c.take(kRowBlock * kColBlock / 2))),
          ds2(reinterpret_cast<uint32_t*>(c.take(kRowBlock / 2 * kColBlock))) {}
  };

  // dS^T = scale P^T (dP^T - D) in place of dP^T for `keys` rows of `cols` queries, through
  // the softcap's slope when there is one (P is 0 where a query does not see the key).
  void ScoresGradient(const float* pt, float* dpt, const float* slopes, int64_t keys, int64_t cols,
                      int64_t qrows, const float* d) const {
    for (int64_t j = 0; j < keys; ++j) {
      float* dsr = dpt + j * kColBlock;
      ScaledDiffProduct(pt + j * kColBlock, dsr, cols, scale, d);
      if (pr.mask.softcap > 0) {  // dS *= 1 - tanh^2
        const float* sl = slopes + j * kColBlock;
        for (int64_t c = 0; c < qrows; ++c)
          dsr[c] = pt[j * kColBlock + c] != 0.0f ? dsr[c] * sl[c] : 0.0f;
      }
    }
  }

  // The rows of kv head hk's query heads that see some key of [j0, j0 + keys): an interval
  // (both bounds of a row's key range are monotone in the row, so a sliding window visits
  // N x window pairs, not N^2).
  std::pair<int64_t, int64_t> QueryRows(int64_t b, int64_t j0, int64_t keys) const {
    int64_t first = 0, last = Sq;
    while (first < Sq && pr.keys(b, first).end <= j0) ++first;
    while (last > first && pr.keys(b, last - 1).begin >= j0 + keys) --last;
    return {first, last};
  }

  // KeyBlock on the tiles: the same five products from bfloat16 operands, P^T and dS^T
  // rounded to bfloat16 for them (float32 accumulation and elementwise work). The block is
  // padded to kRowBlock keys (zero K, V rows and P^T rows) and each query block to a multiple
  // of 32 (zero P^T columns), as the tiles' K dimension needs.
  void TileKeyBlock(int64_t b, int64_t hk, int64_t part, int64_t kb, float* scratch) const {
    Carve carve(scratch);
    const BlockScratch w(carve, Dkp, Dvp);
    const uint16_t* kr = reinterpret_cast<const uint16_t*>(kpack + (b * Hk + hk) * kside);
    const uint16_t* kt = kr + Skp * Dkp;
    const uint16_t* vr = kt + Dkp * Skp;
    const int64_t j0 = kb * kRowBlock, keys = std::min(kRowBlock, Sk - j0);
    std::fill(w.dk, w.dk + kRowBlock * Dkp, 0.0f);
    std::fill(w.dv, w.dv + kRowBlock * Dvp, 0.0f);
    const auto [first, last] = QueryRows(b, j0, keys);
    const tiles::TileScope scope(path);
    for (int64_t h = hk * pr.group; h < (hk + 1) * pr.group; ++h) {
      const uint32_t* qt = reinterpret_cast<const uint32_t*>(qpack + (b * Hq + h) * qside);
      const uint32_t* qr = qt + Dkp / 2 * Sqp;
      const uint32_t* dor = qr + Sqp / 2 * Dkp;
      const uint32_t* dot = dor + Sqp / 2 * Dvp;
      const float* dd = dsum + (b * Hq + h) * Sqp;
      float* dq_t = dq_partial(b, h, part);
      for (int64_t i0 = first - first % kColBlock; i0 < last; i0 += kColBlock) {
        const int64_t cols = std::min(kColBlock, Sqp - i0), qrows = std::min(kColBlock, Sq - i0);
        tiles::gemm(path, kRowBlock, cols, Dkp, kr + j0 * Dkp, Dkp, qt + i0, Sqp, w.pt, kColBlock,
                    false);  // S^T = K Q^T
        Probabilities(b, h, j0, keys, i0, cols, qrows, w.pt, w.slopes);
        std::fill(w.pt + keys * kColBlock, w.pt + kRowBlock * kColBlock, 0.0f);
        RowsToBf16(w.pt, kRowBlock, cols, w.pt16);
        tiles::gemm(path, kRowBlock, Dvp, cols, w.pt16, kColBlock, dor + i0 / 2 * Dvp, Dvp, w.dv,
                    Dvp, true);  // dv += P^T dout
        tiles::gemm(path, kRowBlock, cols, Dvp, vr + j0 * Dvp, Dvp, dot + i0, Sqp, w.dpt, kColBlock,
                    false);  // dP^T = V dout^T
        ScoresGradient(w.pt, w.dpt, w.slopes, kRowBlock, cols, qrows, dd + i0);
        RowsToBf16(w.dpt, kRowBlock, cols, w.ds16);
        RowPairsToBf16(w.dpt, kRowBlock, cols, w.ds2);
        tiles::gemm(path, kRowBlock, Dkp, cols, w.ds16, kColBlock, qr + i0 / 2 * Dkp, Dkp, w.dk,
                    Dkp, true);  // dk += dS^T Q
        tiles::gemm(path, Dkp, cols, kRowBlock, kt + j0, Skp, w.ds2, kColBlock, dq_t + i0, Sqp,
                    true);  // dq^T += K^T dS^T
      }
    }
    for (int64_t j = 0; j < keys; ++j) {
      StoreRow(w.dk + j * Dkp, Dk, g.dk, b, j0 + j, hk);
      StoreRow(w.dv + j * Dvp, Dv, g.dv, b, j0 + j, hk);
    }
  }

  // A float32 row into row (b, i, h) of a float32 or bfloat16 gradient.
  static void StoreRow(const float* src, int64_t n, const TensorView& t, int64_t b, int64_t i,
                       int64_t h) {
    if (t.dtype == DType::kF32) {
      std::copy_n(src, n, t.row<float>(b, i, h));
      return;
    }
    bfloat16* dst = static_cast<bfloat16*>(const_cast<void*>(as_const(t).row_address(b, i, h)));
    for (int64_t c = 0; c < n; ++c) dst[c] = to_bfloat16(src[c]);
  }

  void KeyBlock(int64_t b, int64_t hk, int64_t part, int64_t kb, float* scratch) const {
    Carve carve(scratch);
    const BlockScratch w(carve, Dkp, Dvp);
    float *pt = w.pt, *dpt = w.dpt, *slopes = w.slopes, *dk = w.dk, *dv = w.dv;
    const Side K = key_side(b, hk);
    const int64_t j0 = kb * kRowBlock, keys = std::min(kRowBlock, Sk - j0);
    std::fill(dk, dk + kRowBlock * Dkp, 0.0f);
    std::fill(dv, dv + kRowBlock * Dvp, 0.0f);
    const auto [first, last] = QueryRows(b, j0, keys);
    for (int64_t h = hk * pr.group; h < (hk + 1) * pr.group; ++h) {
      const Side Q = query_side(b, h);
      const float* dd = dsum + (b * Hq + h) * Sqp;
      float* dq_t = dq_partial(b, h, part);
      for (int64_t i0 = first - first % kColBlock; i0 < last; i0 += kColBlock) {
        const int64_t cols = std::min(kColBlock, pad_to_state(Sq - i0)),
                      qrows = std::min(kColBlock, Sq - i0);
        MatMul(K.r + j0 * Dkp, Dkp, Q.t + i0, Sqp, pt, kColBlock, keys, cols, Dk, false);
        Probabilities(b, h, j0, keys, i0, cols, qrows, pt, slopes);
        MatMul(pt, kColBlock, Q.vr + i0 * Dvp, Dvp, dv, Dvp, keys, Dvp, qrows, true);
        MatMul(K.vr + j0 * Dvp, Dvp, Q.vt + i0, Sqp, dpt, kColBlock, keys, cols, Dv, false);
        ScoresGradient(pt, dpt, slopes, keys, cols, qrows, dd + i0);
        MatMul(dpt, kColBlock, Q.r + i0 * Dkp, Dkp, dk, Dkp, keys, Dkp, qrows, true);
        // dq^T[:, i0:] += K_blk^T dS^T (rows beyond qrows of dS^T are zero: P^T is).
        MatMul(K.t + j0, Skp, dpt, kColBlock, dq_t + i0, Sqp, Dk, cols, keys, true);
      }
    }
    for (int64_t j = 0; j < keys; ++j) {
      StoreRow(dk + j * Dkp, Dk, g.dk, b, j0 + j, hk);
      StoreRow(dv + j * Dvp, Dv, g.dv, b, j0 + j, hk);
    }
  }

  // 3. dq = the partitions' dq^T summed in partition order, a vector of rows at a time: the
  // sum stays transposed ([Dk][N], one vector per head dim) and is written out row by row.
  void ReduceDq(Context& ctx) const {
    ctx.parallel_for(B * Hq, [&](int64_t bh, int worker) {
      const int64_t b = bh / Hq, h = bh % Hq;
      const hn::ScalableTag<float> d;
      const int64_t N = static_cast<int64_t>(hn::Lanes(d));  // Sqp is a multiple of N
      float* acc = ctx.scratch(worker);                      // [Dk][N]
      std::vector<float> row(Dk);
      for (int64_t i0 = 0; i0 < Sq; i0 += N) {
        const int64_t n = std::min(N, Sq - i0);
        for (int64_t x = 0; x < Dk; ++x) hn::Store(hn::Zero(d), d, acc + x * N);
        for (int64_t part = 0; part < parts; ++part) {
          const float* src = dq_partial(b, h, part) + i0;
          for (int64_t x = 0; x < Dk; ++x) {
            hn::Store(hn::Add(hn::Load(d, acc + x * N), hn::LoadU(d, src + x * Sqp)), d,
                      acc + x * N);
          }
        }
        for (int64_t r = 0; r < n; ++r) {
          for (int64_t x = 0; x < Dk; ++x) row[x] = acc[x * N + r];
          StoreRow(row.data(), Dk, g.dq, b, i0 + r, h);
        }
      }
    });
  }

  void Run(Context& ctx) {
    Allocate(ctx);
    RowStatistics(ctx);
    Pack(ctx);
    ctx.reserve_scratch(Carve::floats<BlockScratch>(Dkp, Dvp));
    // A task per (batch, kv head, key partition) walks its key blocks.
    ctx.parallel_for(B * Hk * parts, [&](int64_t task, int worker) {
      const int64_t part = task % parts, bh = task / parts;
      for (int64_t kb = part; kb < kblocks; kb += parts) {
        if (on_tiles) {
          TileKeyBlock(bh / Hk, bh % Hk, part, kb, ctx.scratch(worker));
        } else {
          KeyBlock(bh / Hk, bh % Hk, part, kb, ctx.scratch(worker));
        }
      }
    });
    ReduceDq(ctx);
  }
};

void SoftmaxBackward(const BackwardArgs& g, const Problem& pr, Context& ctx) {
  SoftmaxBackwardCall(g, pr).Run(ctx);
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {

HWY_EXPORT(SoftmaxBackward);

void softmax_backward(const BackwardArgs& g, const Problem& p, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(SoftmaxBackward)(g, p, ctx);
}

}  // namespace attnkit::cpu
#endif  // HWY_ONCE
