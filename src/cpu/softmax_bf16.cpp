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

#define ATTNKIT_BF16_TARGET __attribute__((target("avx512f,avx512bf16")))
namespace {

// 2^x for lanes where x >= -126 (the rest 0; x <= 0 here): 2^round(x) p(x - round(x)), p a
// near-minimax fit of 2^f on [-1/2, 1/2] (relative error 2.7e-6), scaled by VSCALEFPS.
ATTNKIT_BF16_TARGET inline __m512 Exp2(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_GE_OQ);
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(0.009570101276040077f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.05591785907745361f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.240247443318367f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931217908859253f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9999992847442627f));
  return _mm512_maskz_scalef_ps(live, p, n);
}

}  // namespace

ATTNKIT_BF16_TARGET void softmax_rows(float* s, int64_t lds, int64_t rows, int64_t keys,
                                      const KeyRange* visible, int64_t j0, float c, float* m,
                                      float* l, float* o, int64_t ldo, uint16_t* pb, int64_t ldp) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const __m512 vc = _mm512_set1_ps(c);
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * lds;
    uint16_t* pr = pb + r * ldp;
    const int64_t begin = visible[r].begin - j0, end = visible[r].end - j0;
    for (int64_t j = 0; j < std::min(begin, keys); ++j) sr[j] = kNegInf;
    for (int64_t j = std::max<int64_t>(end, 0); j < keys; ++j) sr[j] = kNegInf;
    __m512 max0 = _mm512_set1_ps(kNegInf), max1 = max0;  // two chains: half the latency
    for (int64_t j = 0; j < keys; j += 32) {
      max0 = _mm512_max_ps(max0, _mm512_loadu_ps(sr + j));
      max1 = _mm512_max_ps(max1, _mm512_loadu_ps(sr + j + 16));
    }
    const float m_new = std::max(m[r], c * _mm512_reduce_max_ps(_mm512_max_ps(max0, max1)));
    if (m_new == kNegInf) {  // nothing visible yet: P = 0, O and l stay 0
      std::fill(pr, pr + keys, uint16_t{0});
      continue;
    }
    const __m512 vm = _mm512_set1_ps(m_new);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    for (int64_t j = 0; j < keys; j += 32) {
      const __m512 p0 = Exp2(_mm512_fmsub_ps(_mm512_loadu_ps(sr + j), vc, vm));
      const __m512 p1 = Exp2(_mm512_fmsub_ps(_mm512_loadu_ps(sr + j + 16), vc, vm));
      sum0 = _mm512_add_ps(sum0, p0);
      sum1 = _mm512_add_ps(sum1, p1);
      _mm512_storeu_si512(pr + j, (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
    }
    const float alpha = std::exp2(m[r] - m_new);  // 0 when m was -inf
    if (alpha != 1.0f) {
      const __m512 va = _mm512_set1_ps(alpha);
      float* orow = o + r * ldo;
      for (int64_t x = 0; x < ldo; x += 16)
        _mm512_storeu_ps(orow + x, _mm512_mul_ps(va, _mm512_loadu_ps(orow + x)));
    }
    l[r] = l[r] * alpha + _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
    m[r] = m_new;
  }
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
