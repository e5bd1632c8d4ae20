// Register-tiled float32 matmul for small per-head blocks, in the per-target namespace
// and small vector helpers (include at file scope after hwy/highway.h, like Highway -inl.h
// headers). Per-head blocks are too small for
// BLAS call overhead and we thread over heads ourselves.
// Re-inclusion per target is intended (Highway toggle idiom). Loads are unaligned: callers
// pass std::vector-backed states as well as aligned scratch.
#if defined(ATTNKIT_CPU_OPS_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_CPU_OPS_MATMUL_INL_H_
#undef ATTNKIT_CPU_OPS_MATMUL_INL_H_
#else
#define ATTNKIT_CPU_OPS_MATMUL_INL_H_
#endif

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cstring>

#include "attnkit/tensor.hpp"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// C[r][c..c+NV*N) (+)= sum_k A[r][k] B[k][c..c+NV*N) for R rows.
template <int R, int NV>
HWY_INLINE void MatMulTile(const float* HWY_RESTRICT a, int64_t lda, const float* HWY_RESTRICT b,
                           int64_t ldb, int64_t depth, int64_t c, float* HWY_RESTRICT out,
                           int64_t ldc, bool accumulate) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  using V = hn::Vec<decltype(d)>;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < NV; ++x) {
      acc[r][x] = accumulate ? hn::LoadU(d, out + r * ldc + c + x * N) : hn::Zero(d);
    }
  for (int64_t k = 0; k < depth; ++k) {
    V bv[NV];
    for (int x = 0; x < NV; ++x) bv[x] = hn::LoadU(d, b + k * ldb + c + x * N);
    for (int r = 0; r < R; ++r) {
      const V av = hn::Set(d, a[r * lda + k]);
      for (int x = 0; x < NV; ++x) acc[r][x] = hn::MulAdd(av, bv[x], acc[r][x]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < NV; ++x) hn::StoreU(acc[r][x], d, out + r * ldc + c + x * N);
}

template <int R>
HWY_INLINE void MatMulRows(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t depth,
                           int64_t cols, float* out, int64_t ldc, bool accumulate) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(hn::ScalableTag<float>()));
  int64_t c = 0;
  for (; c + 4 * N <= cols; c += 4 * N)
    MatMulTile<R, 4>(a, lda, b, ldb, depth, c, out, ldc, accumulate);
  switch ((cols - c) / N) {
    case 3:
      MatMulTile<R, 3>(a, lda, b, ldb, depth, c, out, ldc, accumulate);
      break;
    case 2:
      MatMulTile<R, 2>(a, lda, b, ldb, depth, c, out, ldc, accumulate);
      break;
    case 1:
      MatMulTile<R, 1>(a, lda, b, ldb, depth, c, out, ldc, accumulate);
      break;
    default:
      break;
  }
}

// out[rows x cols] (+)= A[rows x depth] B[depth x cols]; cols a multiple of Lanes, all
// row-major with the given leading dimensions (in floats).
HWY_INLINE void MatMul(const float* a, int64_t lda, const float* b, int64_t ldb, float* out,
                       int64_t ldc, int64_t rows, int64_t cols, int64_t depth, bool accumulate) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    MatMulRows<4>(a + r * lda, lda, b, ldb, depth, cols, out + r * ldc, ldc, accumulate);
  for (; r < rows; ++r)
    MatMulRows<1>(a + r * lda, lda, b, ldb, depth, cols, out + r * ldc, ldc, accumulate);
}

// sum_j x[j] (times w[j], written back into x, when w is given) over j < cnt; x and w
// hold RoundUp(cnt, Lanes) floats, x zero past cnt. Vector partial sums: a scalar running
// sum is a chain of dependent adds (4 cycles each) that costs as much as a chunk's matmuls.
HWY_INLINE float WeightedSum(float* HWY_RESTRICT x, const float* HWY_RESTRICT w, int64_t cnt) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  auto s0 = hn::Zero(d), s1 = hn::Zero(d);
  int64_t j = 0;
  for (; j + 2 * N <= cnt; j += 2 * N) {
    auto x0 = hn::LoadU(d, x + j), x1 = hn::LoadU(d, x + j + N);
    if (w != nullptr) {
      x0 = hn::Mul(x0, hn::LoadU(d, w + j)), x1 = hn::Mul(x1, hn::LoadU(d, w + j + N));
      hn::StoreU(x0, d, x + j), hn::StoreU(x1, d, x + j + N);
    }
    s0 = hn::Add(s0, x0), s1 = hn::Add(s1, x1);
  }
  for (; j < cnt; j += N) {  // the padding past cnt is zero in x
    auto x0 = hn::LoadU(d, x + j);
    if (w != nullptr) x0 = hn::Mul(x0, hn::LoadU(d, w + j)), hn::StoreU(x0, d, x + j);
    s0 = hn::Add(s0, x0);
  }
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1)));
}

// Row sr[0:cols) of intra-chunk scores (cols a multiple of Lanes): zero from column vis on
// (the causal mask), times the weights w when given; returns its sum.
HWY_INLINE float MaskRow(float* HWY_RESTRICT sr, const float* HWY_RESTRICT w, int64_t vis,
                         int64_t cols) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  auto sum = hn::Zero(d);
  for (int64_t j = 0; j < cols; j += N) {
    const auto keep = hn::FirstN(d, static_cast<size_t>(std::clamp<int64_t>(vis - j, 0, N)));
    auto x = hn::IfThenElseZero(keep, hn::LoadU(d, sr + j));
    if (w != nullptr) x = hn::Mul(x, hn::LoadU(d, w + j));
    hn::StoreU(x, d, sr + j);
    sum = hn::Add(sum, x);
  }
  return hn::GetLane(hn::SumOfLanes(d, sum));
}

// dst[c][r] = src[r][c] for r < rows, c < cols. 4 x 4 blocks in 128-bit registers (two
// rounds of interleaves); an element at a time, a column store each, took a fifth of the
// linear backward's time. The edges past a multiple of 4 go one at a time.
HWY_INLINE void Transpose(const float* HWY_RESTRICT src, int64_t lds, int64_t rows, int64_t cols,
                          float* HWY_RESTRICT dst, int64_t ldd) {
#if HWY_TARGET == HWY_SCALAR
  const int64_t rows4 = 0, cols4 = 0;
#else
  const hn::Full128<float> d4;
  const int64_t rows4 = rows & ~int64_t{3}, cols4 = cols & ~int64_t{3};
  for (int64_t r = 0; r < rows4; r += 4) {
    const float* s = src + r * lds;
    for (int64_t c = 0; c < cols4; c += 4) {
      const auto v0 = hn::LoadU(d4, s + c), v1 = hn::LoadU(d4, s + lds + c);
      const auto v2 = hn::LoadU(d4, s + 2 * lds + c), v3 = hn::LoadU(d4, s + 3 * lds + c);
      const auto t0 = hn::InterleaveLower(d4, v0, v1), t1 = hn::InterleaveLower(d4, v2, v3);
      const auto t2 = hn::InterleaveUpper(d4, v0, v1), t3 = hn::InterleaveUpper(d4, v2, v3);
      float* o = dst + c * ldd + r;
      hn::StoreU(hn::ConcatLowerLower(d4, t1, t0), d4, o);
      hn::StoreU(hn::ConcatUpperUpper(d4, t1, t0), d4, o + ldd);
      hn::StoreU(hn::ConcatLowerLower(d4, t3, t2), d4, o + 2 * ldd);
      hn::StoreU(hn::ConcatUpperUpper(d4, t3, t2), d4, o + 3 * ldd);
    }
  }
#endif
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = r < rows4 ? cols4 : 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  }
}

// Dot product of two float rows of length n (any n).
HWY_INLINE float Dot(const float* HWY_RESTRICT x, const float* HWY_RESTRICT y, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  auto acc = hn::Zero(d);
  int64_t i = 0;
  for (; i + N <= n; i += N) acc = hn::MulAdd(hn::LoadU(d, x + i), hn::LoadU(d, y + i), acc);
  float s = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

// dst[0:np) = src[0:n) then zeros (np >= n, a multiple of Lanes). Masked loads read no
// element past src[n), and short rows avoid a memmove call per row.
HWY_INLINE void CopyPadded(const float* HWY_RESTRICT src, int64_t n, float* HWY_RESTRICT dst,
                           int64_t np) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::LoadU(d, src + i), d, dst + i);
  if (i < n) {
    hn::StoreU(hn::MaskedLoad(hn::FirstN(d, static_cast<size_t>(n - i)), d, src + i), d, dst + i);
    i += N;
  }
  for (; i < np; i += N) hn::StoreU(hn::Zero(d), d, dst + i);
}

// Prefetches the cache lines of a row of n floats: rows of one head are H * D floats
// apart in [B, S, H, D] layouts, a stride the hardware prefetchers do not follow well.
// How far ahead (rows) row-streaming kernels prefetch; 24 measured best for linear at 16k.
constexpr int64_t kPrefetchRows = 24;
HWY_INLINE void PrefetchRow(const void* row, int64_t bytes) {
  for (int64_t i = 0; i < bytes; i += 64) hwy::Prefetch(static_cast<const char*>(row) + i);
}

// bfloat16 bits src[0:n) widened into dst: the 16 bits are the float's upper half.
HWY_INLINE void WidenBf16(const uint16_t* HWY_RESTRICT src, float* HWY_RESTRICT dst, int64_t n) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::Rebind<uint16_t, decltype(df)> d16;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto u = hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, src + i)));
    hn::StoreU(hn::BitCast(df, u), df, dst + i);
  }
  for (; i < n; ++i) dst[i] = to_float(bfloat16{src[i]});
}

// Row [i0, i1, i2] of a float32 or bfloat16 view as float32: the view's own memory, or
// widened into tmp (at least shape[3] floats).
HWY_INLINE const float* RowF32(const ConstTensorView& t, int64_t i0, int64_t i1, int64_t i2,
                               float* HWY_RESTRICT tmp) {
  if (t.dtype == DType::kF32) return t.row<const float>(i0, i1, i2);
  WidenBf16(static_cast<const uint16_t*>(t.row_address(i0, i1, i2)), tmp, t.shape[3]);
  return tmp;
}

// y[0:n) += a * x[0:n); n a multiple of Lanes.
HWY_INLINE void Axpy(float a, const float* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto va = hn::Set(d, a);
  for (int64_t i = 0; i < n; i += N)
    hn::StoreU(hn::MulAdd(va, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, y + i);
}

// x[0:n) *= a; n a multiple of Lanes.
HWY_INLINE void Scale(float a, float* HWY_RESTRICT x, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto va = hn::Set(d, a);
  for (int64_t i = 0; i < n; i += N) hn::StoreU(hn::Mul(va, hn::LoadU(d, x + i)), d, x + i);
}

}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#endif  // ATTNKIT_CPU_OPS_MATMUL_INL_H_
