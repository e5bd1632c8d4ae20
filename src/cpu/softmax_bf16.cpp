// AVX512-BF16 score tiles for exact softmax with bfloat16 inputs: VDPBF16PS multiplies
// pairs of bfloat16 (exact in float32) and adds both products to a float32 accumulator,
// so QK^T takes half the instructions of the widened float32 path. Highway 1.0.3 has no
// bf16 dot op, hence plain intrinsics in functions compiled for that extension only and
// called after a run-time CPU check.
#include <immintrin.h>

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

}  // namespace attnkit::cpu::bf16
