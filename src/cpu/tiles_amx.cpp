// The AMX tile unit. This file alone is compiled with AMX code generation (-mamx-tile
// -mamx-bf16, CMakeLists.txt); its code runs only after tiles::amx_usable() said yes.
#include <immintrin.h>

#include "src/cpu/tiles-inl.hpp"
#include "src/cpu/tiles.hpp"

namespace attnkit::cpu::tiles {
namespace {

// g++'s tile intrinsics are macros that paste their register number into the assembly, so
// each register is spelled out.
#define ATTNKIT_EACH_TILE(F) \
  F(0)                       \
  F(1) F(2) F(3) F(4) F(5) F(6) F(7)

struct AmxUnit {
  template <int T>
  void load(const void* p, int64_t stride) {
#define ATTNKIT_LOAD(R) \
  if constexpr (T == R) _tile_loadd(R, p, stride);
    ATTNKIT_EACH_TILE(ATTNKIT_LOAD)
#undef ATTNKIT_LOAD
  }
  template <int T>
  void zero() {
#define ATTNKIT_ZERO(R) \
  if constexpr (T == R) _tile_zero(R);
    ATTNKIT_EACH_TILE(ATTNKIT_ZERO)
#undef ATTNKIT_ZERO
  }
  template <int T>
  void store(void* p, int64_t stride) {
#define ATTNKIT_STORE(R) \
  if constexpr (T == R) _tile_stored(R, p, stride);
    ATTNKIT_EACH_TILE(ATTNKIT_STORE)
#undef ATTNKIT_STORE
  }
  // The products Block and TallBlock issue.
  template <int C, int A, int B>
  void dp() {
    static_assert(B >= 6 ? (A == 4 + C / 2 && B == 6 + C % 2)
                         : (B == 4 && A == (C == 3 ? 5 : 5 + C)));
    if constexpr (B >= 6 && C == 0) _tile_dpbf16ps(0, 4, 6);
    if constexpr (B >= 6 && C == 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (B >= 6 && C == 2) _tile_dpbf16ps(2, 5, 6);
    if constexpr (B >= 6 && C == 3) _tile_dpbf16ps(3, 5, 7);
    if constexpr (B == 4 && C == 0) _tile_dpbf16ps(0, 5, 4);
    if constexpr (B == 4 && C == 1) _tile_dpbf16ps(1, 6, 4);
    if constexpr (B == 4 && C == 2) _tile_dpbf16ps(2, 7, 4);
    if constexpr (B == 4 && C == 3) _tile_dpbf16ps(3, 5, 4);
  }
};
#undef ATTNKIT_EACH_TILE

}  // namespace

// Tile configuration depth of this thread's TileScopes. A call outside any scope loads the
// configuration and releases it after: the thread may run other AMX code (oneDNN inside
// PyTorch) between two calls.
namespace {
thread_local int scope_depth = 0;
const TileConfig kConfig;
}  // namespace

void amx_begin() {
  if (scope_depth++ == 0) _tile_loadconfig(&kConfig);
}
void amx_end() {
  if (--scope_depth == 0) _tile_release();
}

void amx_gemm(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda, const uint32_t* b,
              int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  AmxUnit u;
  if (scope_depth > 0) {
    Gemm(u, M, N, K, a, lda, b, ldb, c, ldc, accumulate);
    return;
  }
  amx_begin();
  Gemm(u, M, N, K, a, lda, b, ldb, c, ldc, accumulate);
  amx_end();
}

// TDPBF16PS on registers only (four independent accumulators): the tile unit's peak, for
// benchmarks to read kernels against. 4 x 16 x 16 x 32 x 2 flops per iteration.
void amx_peak_loop(int64_t iters) {
  alignas(64) static const uint8_t zeros[16 * 64] = {};
  amx_begin();
  _tile_loadd(4, zeros, 64);
  _tile_loadd(5, zeros, 64);
  _tile_loadd(6, zeros, 64);
  _tile_loadd(7, zeros, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  amx_end();
}

}  // namespace attnkit::cpu::tiles
