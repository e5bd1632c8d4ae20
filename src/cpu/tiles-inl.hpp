// The one blocking of tiles::gemm, written once over a tile unit U (AmxUnit in
// tiles_amx.cpp, EmulatedUnit in tiles.cpp): eight registers, C in 0-3 (a 32 x 32 block),
// A in 4-5 (two 16-row strips), B in 6-7 (two 16-column strips), as oneDNN's brgemm and
// PyTorch's flash attention use them; for N = 16 a column of four C tiles (TallBlock). U
// provides
//   template <int T> void load(const void* p, int64_t stride_bytes);   16 rows of 64 bytes
//   template <int T> void zero();
//   template <int C, int A, int B> void dp();                           C += A B (bf16 pairs)
//   template <int T> void store(void* p, int64_t stride_bytes);
// Included by one translation unit per unit, in an unnamed namespace (internal linkage:
// the AMX copy is compiled with AMX code generation and must not be shared).
#ifndef ATTNKIT_CPU_TILES_INL_HPP_
#define ATTNKIT_CPU_TILES_INL_HPP_

#include <cstdint>

#include "src/cpu/tiles.hpp"

namespace attnkit::cpu::tiles {
namespace {

// The tile configuration (palette 1): every register 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};
static_assert(sizeof(TileConfig) == 64);

// One 16(TM: 32) x 16(TN: 32) block of C over all of K.
template <bool TM, bool TN, class U>
inline void Block(U& u, int64_t K, const uint16_t* a, int64_t lda, const uint32_t* b, int64_t ldb,
                  float* c, int64_t ldc, bool accumulate) {
  const int64_t sa = lda * 2, sb = ldb * 4, sc = ldc * 4;  // strides in bytes
  if (accumulate) {
    u.template load<0>(c, sc);
    if (TN) u.template load<1>(c + 16, sc);
    if (TM) u.template load<2>(c + 16 * ldc, sc);
    if (TM && TN) u.template load<3>(c + 16 * ldc + 16, sc);
  } else {
    u.template zero<0>();
    if (TN) u.template zero<1>();
    if (TM) u.template zero<2>();
    if (TM && TN) u.template zero<3>();
  }
  for (int64_t k = 0; k < K; k += kTileK) {
    const uint32_t* bk = b + (k / 2) * ldb;
    u.template load<4>(a + k, sa);
    u.template load<6>(bk, sb);
    if (TN) u.template load<7>(bk + 16, sb);
    if (TM) u.template load<5>(a + 16 * lda + k, sa);
    u.template dp<0, 4, 6>();
    if (TN) u.template dp<1, 4, 7>();
    if (TM) u.template dp<2, 5, 6>();
    if (TM && TN) u.template dp<3, 5, 7>();
  }
  u.template store<0>(c, sc);
  if (TN) u.template store<1>(c + 16, sc);
  if (TM) u.template store<2>(c + 16 * ldc, sc);
  if (TM && TN) u.template store<3>(c + 16 * ldc + 16, sc);
}

// One 16 MT x 16 block of C (N = 16: one column of tiles) over all of K, MT <= 4: C in 0-3,
// B in 4, A cycling through 5-7, so that MT independent accumulations are in flight (a
// tile's consecutive products are serial, and two chains leave the unit idle).
template <int MT, class U>
inline void TallBlock(U& u, int64_t K, const uint16_t* a, int64_t lda, const uint32_t* b,
                      int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  const int64_t sa = lda * 2, sb = ldb * 4, sc = ldc * 4;
  const int64_t a16 = 16 * lda, c16 = 16 * ldc;
  if (accumulate) {
    u.template load<0>(c, sc);
    if (MT > 1) u.template load<1>(c + c16, sc);
    if (MT > 2) u.template load<2>(c + 2 * c16, sc);
    if (MT > 3) u.template load<3>(c + 3 * c16, sc);
  } else {
    u.template zero<0>();
    if (MT > 1) u.template zero<1>();
    if (MT > 2) u.template zero<2>();
    if (MT > 3) u.template zero<3>();
  }
  for (int64_t k = 0; k < K; k += kTileK) {
    u.template load<4>(b + (k / 2) * ldb, sb);
    u.template load<5>(a + k, sa);
    u.template dp<0, 5, 4>();
    if (MT > 1) {
      u.template load<6>(a + a16 + k, sa);
      u.template dp<1, 6, 4>();
    }
    if (MT > 2) {
      u.template load<7>(a + 2 * a16 + k, sa);
      u.template dp<2, 7, 4>();
    }
    if (MT > 3) {
      u.template load<5>(a + 3 * a16 + k, sa);
      u.template dp<3, 5, 4>();
    }
  }
  u.template store<0>(c, sc);
  if (MT > 1) u.template store<1>(c + c16, sc);
  if (MT > 2) u.template store<2>(c + 2 * c16, sc);
  if (MT > 3) u.template store<3>(c + 3 * c16, sc);
}

template <class U>
inline void Gemm(U& u, int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda,
                 const uint32_t* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (N == 16) {  // one column of tiles: 64 rows at a time
    int64_t m = 0;
    for (; m + 64 <= M; m += 64)
      TallBlock<4>(u, K, a + m * lda, lda, b, ldb, c + m * ldc, ldc, accumulate);
    const int64_t left = (M - m) / 16;
    if (left == 3) TallBlock<3>(u, K, a + m * lda, lda, b, ldb, c + m * ldc, ldc, accumulate);
    if (left == 2) TallBlock<2>(u, K, a + m * lda, lda, b, ldb, c + m * ldc, ldc, accumulate);
    if (left == 1) TallBlock<1>(u, K, a + m * lda, lda, b, ldb, c + m * ldc, ldc, accumulate);
    return;
  }
  for (int64_t m = 0; m < M; m += 32) {
    const uint16_t* am = a + m * lda;
    float* cm = c + m * ldc;
    const bool tm = m + 32 <= M;
    int64_t n = 0;
    for (; n + 32 <= N; n += 32) {
      if (tm) {
        Block<true, true>(u, K, am, lda, b + n, ldb, cm + n, ldc, accumulate);
      } else {
        Block<false, true>(u, K, am, lda, b + n, ldb, cm + n, ldc, accumulate);
      }
    }
    if (n < N) {  // a last strip of 16 columns
      if (tm) {
        Block<true, false>(u, K, am, lda, b + n, ldb, cm + n, ldc, accumulate);
      } else {
        Block<false, false>(u, K, am, lda, b + n, ldb, cm + n, ldc, accumulate);
      }
    }
  }
}

}  // namespace
}  // namespace attnkit::cpu::tiles

#endif  // ATTNKIT_CPU_TILES_INL_HPP_
