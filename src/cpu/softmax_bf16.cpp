// AVX512-BF16 score tiles for exact softmax with bfloat16 inputs: VDPBF16PS multiplies
// pairs of bfloat16 (exact in float32) and adds both products to a float32 accumulator,
// so QK^T takes half the instructions of the widened float32 path. Highway 1.0.3 has no
// bf16 dot op, hence plain intrinsics in functions compiled for that extension only and
// called after a run-time CPU check.
// g++ 12's AVX-512 headers initialise their own temporaries from themselves (`__Y = __Y`),
// which -Wuninitialized reports wherever the intrinsics inline.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "src/cpu/kernels.hpp"

namespace attnkit::cpu::bf16 {
namespace {

constexpr int kRows = 8;  // 8 rows x 2 vectors of 16 keys: 16 accumulators

template <int R>
__attribute__((target("avx512f,avx512bf16"))) void Tile(const uint32_t* q2, int64_t ldq,
                                                        const uint32_t* kt2, int64_t pairs,
                                                        int64_t ldk, int64_t j, float* s,
                                                        int64_t lds) {
  __m512 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kt2 + p * ldk + j);
    const __m512bh k1 = (__m512bh)_mm512_loadu_si512(kt2 + p * ldk + j + 16);
    for (int r = 0; r < R; ++r) {
      const __m512bh qb = (__m512bh)_mm512_set1_epi32(static_cast<int>(q2[r * ldq + p]));
      acc0[r] = _mm512_dpbf16_ps(acc0[r], qb, k0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], qb, k1);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(s + r * lds + j, acc0[r]);
    _mm512_storeu_ps(s + r * lds + j + 16, acc1[r]);
  }
}

}  // namespace

void scores(const uint32_t* q2, int64_t ldq, int64_t rows, const uint32_t* kt2, int64_t pairs,
            int64_t ldk, int64_t keys, float* s, int64_t lds) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    for (int64_t j = 0; j < keys; j += 32)
      Tile<kRows>(q2 + r * ldq, ldq, kt2, pairs, ldk, j, s + r * lds, lds);
  }
  for (; r < rows; ++r) {
    for (int64_t j = 0; j < keys; j += 32)
      Tile<1>(q2 + r * ldq, ldq, kt2, pairs, ldk, j, s + r * lds, lds);
  }
}

#define ATTNKIT_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16")))
namespace {

// 2^x for lanes where x >= -126 (the rest 0; x < 127): p(x - floor(x)) 2^floor(x), the
// fraction from VREDUCEPS, the power applied by VSCALEFPS (which floors x itself), p a
// near-minimax fit of 2^f on [0, 1) (relative error 2.7e-6).
ATTNKIT_BF16_TARGET inline __m512 Exp2(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_GE_OQ);
  const __m512 f = _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF);
  __m512 p = _mm512_set1_ps(0.013534167781472206f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.052011460065841675f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2414427548646927f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6930038332939148f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000026226043701f));
  return _mm512_maskz_scalef_ps(live, p, x);
}

// Offsets j stride of 16 rows (j < 16), the index vector of the tile path's gathers.
ATTNKIT_BF16_TARGET inline __m512i RowOffsets(int64_t stride) {
  return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                            _mm512_set1_epi32(static_cast<int32_t>(stride)));
}

// P = 2^(c s - m) of a span (st [keys][ld], 16 lanes) as bfloat16 pairs of keys into pt
// [keys / 2][ld]: lane n of pair row j / 2 holds P[j][n] (low half) and P[j + 1][n] (high),
// the B operand layout of the P V product. Returns P's float32 sums. Lanes with m = -inf
// (nothing visible yet) have x = NaN, which Exp2 turns to 0.
ATTNKIT_BF16_TARGET inline __m512 ExpPass(const float* st, int64_t ld, int64_t keys, __m512 vc,
                                          __m512 m, uint32_t* pt) {
  const __m512i interleave =
      _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
  for (int64_t j = 0; j < keys; j += 2) {
    const __m512 p0 = Exp2(_mm512_fmsub_ps(_mm512_loadu_ps(st + j * ld), vc, m));
    const __m512 p1 = Exp2(_mm512_fmsub_ps(_mm512_loadu_ps(st + (j + 1) * ld), vc, m));
    sum0 = _mm512_add_ps(sum0, p0);
    sum1 = _mm512_add_ps(sum1, p1);
    const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(p1, p0);  // p0 low half, p1 high
    _mm512_storeu_si512(pt + j / 2 * ld, _mm512_permutexvar_epi16(interleave, both));
  }
  return _mm512_add_ps(sum0, sum1);
}

}  // namespace

ATTNKIT_BF16_TARGET void softmax_columns(float* st, int64_t ld, int64_t keys, int64_t j0,
                                         const int32_t* begin, const int32_t* end, float c,
                                         float* m, float* l, float* ot, int64_t dvp, uint32_t* pt) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const __m512i vb = _mm512_loadu_si512(begin), ve = _mm512_loadu_si512(end);
  // Keys visible to all 16 queries need no mask; the others get -inf per lane.
  const int64_t all_from = _mm512_reduce_max_epi32(vb), all_to = _mm512_reduce_min_epi32(ve);
  for (int64_t j = 0; j < keys; ++j) {
    const int64_t key = j0 + j;
    if (key >= all_from && key < all_to) {
      j = std::min(all_to - j0, keys) - 1;
      continue;
    }
    const __m512i vj = _mm512_set1_epi32(static_cast<int32_t>(key));
    const __mmask16 vis = _mm512_cmpge_epi32_mask(vj, vb) & _mm512_cmplt_epi32_mask(vj, ve);
    float* row = st + j * ld;
    _mm512_storeu_ps(row, _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), vis, _mm512_loadu_ps(row)));
  }
  const __m512 vc = _mm512_set1_ps(c);
  const __m512 m_old = _mm512_loadu_ps(m);
  // Once every lane has a max, this span's exponentials are first taken against it, stale or
  // not (FlashAttention-4's conditional rescaling): a larger max here only makes some P > 1.
  // Kept when no lane's sum exceeds 2^8 per key (so every P <= 2^17: nothing overflows, and
  // O needs no rescaling); else the span is redone against its new max.
  if (_mm512_cmp_ps_mask(m_old, _mm512_set1_ps(kNegInf), _CMP_EQ_OQ) == 0) {
    const __m512 sum = ExpPass(st, ld, keys, vc, m_old, pt);
    const __m512 bound = _mm512_set1_ps(256.0f * static_cast<float>(keys));
    if (_mm512_cmp_ps_mask(sum, bound, _CMP_LE_OQ) == 0xFFFF) {  // NaN, inf: redone
      _mm512_storeu_ps(l, _mm512_add_ps(_mm512_loadu_ps(l), sum));
      return;
    }
  }
  __m512 mx0 = _mm512_set1_ps(kNegInf), mx1 = mx0, mx2 = mx0, mx3 = mx0;  // 4 chains
  for (int64_t j = 0; j < keys; j += 4) {
    mx0 = _mm512_max_ps(mx0, _mm512_loadu_ps(st + j * ld));
    mx1 = _mm512_max_ps(mx1, _mm512_loadu_ps(st + (j + 1) * ld));
    mx2 = _mm512_max_ps(mx2, _mm512_loadu_ps(st + (j + 2) * ld));
    mx3 = _mm512_max_ps(mx3, _mm512_loadu_ps(st + (j + 3) * ld));
  }
  const __m512 vmax = _mm512_max_ps(_mm512_max_ps(mx0, mx1), _mm512_max_ps(mx2, mx3));
  const __m512 m_new = _mm512_max_ps(m_old, _mm512_mul_ps(vmax, vc));
  // 2^(m_old - m_new): 1 where the max held, 0 where nothing was visible before (-inf - x,
  // and NaN for -inf - -inf, fail Exp2's range test).
  const __m512 alpha =
      _mm512_mask_blend_ps(_mm512_cmp_ps_mask(m_old, m_new, _CMP_EQ_OQ),
                           Exp2(_mm512_sub_ps(m_old, m_new)), _mm512_set1_ps(1.0f));
  const __m512 sum = ExpPass(st, ld, keys, vc, m_new, pt);
  for (int64_t x = 0; x < dvp; ++x)
    _mm512_storeu_ps(ot + x * ld, _mm512_mul_ps(alpha, _mm512_loadu_ps(ot + x * ld)));
  _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), alpha, sum));
  _mm512_storeu_ps(m, m_new);
}

ATTNKIT_BF16_TARGET void transpose16(const uint16_t* row0, int64_t stride, int64_t dim,
                                     uint16_t* dst, int64_t ld) {
  // Element offsets of the 16 rows (VPGATHERDD with scale 2: the offsets count uint16s).
  const __m512i idx = RowOffsets(stride);
  int64_t c = 0;
  for (; c + 2 <= dim; c += 2) {  // dims c, c + 1 of each row in one 32-bit word
    const __m512i w = _mm512_i32gather_epi32(idx, row0 + c, 2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c * ld), _mm512_cvtepi32_epi16(w));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (c + 1) * ld),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(w, 16)));
  }
  for (; c < dim; ++c) {  // an odd last dim: no word past the row's end is read
    for (int64_t j = 0; j < 16; ++j) dst[c * ld + j] = row0[j * stride + c];
  }
}

ATTNKIT_BF16_TARGET void gather_pairs(const uint16_t* row0, int64_t stride, int64_t dim,
                                      uint32_t* dst, int64_t ld) {
  const __m512i idx = RowOffsets(stride);
  int64_t c = 0;
  for (; c + 2 <= dim; c += 2)
    _mm512_storeu_si512(dst + c / 2 * ld, _mm512_i32gather_epi32(idx, row0 + c, 2));
  if (c < dim) {  // an odd last dim pairs with zero
    for (int64_t j = 0; j < 16; ++j) dst[c / 2 * ld + j] = row0[j * stride + c];
  }
}

ATTNKIT_BF16_TARGET void scaled_column(const float* src, int64_t ld, int64_t n, float scale,
                                       float* dst) {
  const __m512i idx = RowOffsets(ld);
  const __m512 vs = _mm512_set1_ps(scale);
  int64_t c = 0;
  for (; c + 16 <= n; c += 16)
    _mm512_storeu_ps(dst + c, _mm512_mul_ps(vs, _mm512_i32gather_ps(idx, src + c * ld, 4)));
  for (; c < n; ++c) dst[c] = src[c * ld] * scale;
}

ATTNKIT_BF16_TARGET float dot_peak_loop(int64_t iters) {
  __m512 acc[16];
  for (int r = 0; r < 16; ++r) acc[r] = _mm512_set1_ps(static_cast<float>(r));
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3F803F80);  // pairs of 1.0
  for (int64_t i = 0; i < iters; ++i) {
    for (int r = 0; r < 16; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], x, x);
  }
  __m512 s = acc[0];
  for (int r = 1; r < 16; ++r) s = _mm512_add_ps(s, acc[r]);
  return _mm512_reduce_add_ps(s);
}

}  // namespace attnkit::cpu::bf16
