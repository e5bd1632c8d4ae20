// Widening of bfloat16 / float16 views to float32 and rounding back (src/cpu/kernels.hpp).
// Memory-bound: rows are cut into pieces of ~64 KiB that the context's threads share.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/convert.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <algorithm>
#include <array>

#include "src/cpu/kernels.hpp"
#include "src/cpu/ops/matmul-inl.h"  // WidenBf16

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace {

using DF = hn::ScalableTag<float>;
using DU32 = hn::RebindToUnsigned<DF>;
using DU16 = hn::Rebind<uint16_t, DF>;
using DH = hn::Rebind<hwy::float16_t, DF>;

// float32 to bfloat16 bits, rounded to nearest even as to_bfloat16 (NaN stays a quiet NaN).
HWY_INLINE void NarrowBf16(const float* HWY_RESTRICT src, uint16_t* HWY_RESTRICT dst, int64_t n) {
  const DF df;
  const DU32 du;
  const DU16 d16;
  const hn::RebindToSigned<DF> di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto u = hn::BitCast(du, hn::LoadU(df, src + i));
    const auto odd = hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u));
    const auto rounded = hn::ShiftRight<16>(hn::Add(u, hn::Add(hn::Set(du, 0x7fffu), odd)));
    const auto nan = hn::Gt(hn::And(u, hn::Set(du, 0x7fffffffu)), hn::Set(du, 0x7f800000u));
    const auto quiet = hn::Or(hn::ShiftRight<16>(u), hn::Set(du, 0x40u));
    const auto bits = hn::IfThenElse(nan, quiet, rounded);  // <= 0xffff: DemoteTo keeps it
    hn::StoreU(hn::DemoteTo(d16, hn::BitCast(di, bits)), d16, dst + i);
  }
  for (; i < n; ++i) dst[i] = to_bfloat16(src[i]).bits;
}

// binary16 from and to float32 on F16C (every x86 target from AVX2 on): Highway's emulation
// on the fallback targets maps Inf and NaN to finite values and truncates instead of
// rounding, so those convert one element at a time with the scalar functions.
HWY_INLINE void WidenF16(const uint16_t* HWY_RESTRICT src, float* HWY_RESTRICT dst, int64_t n) {
  int64_t i = 0;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  const DF df;
  const DH dh;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto* h = reinterpret_cast<const hwy::float16_t*>(src);
  for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, h + i)), df, dst + i);
#endif
  for (; i < n; ++i) dst[i] = to_float(float16{src[i]});
}

HWY_INLINE void NarrowF16(const float* HWY_RESTRICT src, uint16_t* HWY_RESTRICT dst, int64_t n) {
  int64_t i = 0;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  const DF df;
  const DH dh;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto* h = reinterpret_cast<hwy::float16_t*>(dst);
  for (; i + N <= n; i += N) hn::StoreU(hn::DemoteTo(dh, hn::LoadU(df, src + i)), dh, h + i);
#endif
  for (; i < n; ++i) dst[i] = to_float16(src[i]).bits;
}

// The rows of a view: every index of its leading rank - 1 dimensions, in row-major order.
struct Rows {
  int64_t count = 1, len = 1;
  std::array<int64_t, 3> shape{1, 1, 1}, stride{0, 0, 0};
  explicit Rows(const ConstTensorView& t) {
    len = t.rank > 0 ? t.shape[t.rank - 1] : 1;
    for (int i = 0; i + 1 < t.rank; ++i) {
      shape[3 - (t.rank - 1) + i] = t.shape[i];
      stride[3 - (t.rank - 1) + i] = t.stride[i];
      count *= t.shape[i];
    }
  }
  // Element offset of row r in the view.
  int64_t offset(int64_t r) const {
    const int64_t c = r % shape[2], b = (r / shape[2]) % shape[1], a = r / (shape[1] * shape[2]);
    return a * stride[0] + b * stride[1] + c * stride[2];
  }
};

// fn(first row, end row) over pieces of about 64 KiB of rows.
template <typename Fn>
void ForRowPieces(const Rows& rows, Context& ctx, Fn&& fn) {
  if (rows.count == 0 || rows.len == 0) return;
  const int64_t per = std::max<int64_t>(1, (int64_t{16} << 10) / rows.len);
  const int64_t pieces = (rows.count + per - 1) / per;
  ctx.parallel_for(
      pieces, [&](int64_t p, int) { fn(p * per, std::min(rows.count, (p + 1) * per)); },
      6.0 * static_cast<double>(rows.count * rows.len));
}

void Widen(const ConstTensorView& src, float* HWY_RESTRICT dst, Context& ctx) {
  const Rows rows(src);
  const auto* base = static_cast<const uint16_t*>(src.data);
  const bool bf16 = src.dtype == DType::kBF16;
  ForRowPieces(rows, ctx, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      (bf16 ? WidenBf16 : WidenF16)(base + rows.offset(r), dst + r * rows.len, rows.len);
    }
  });
}

void Narrow(const float* HWY_RESTRICT src, const TensorView& dst, Context& ctx) {
  const Rows rows(as_const(dst));
  auto* base = static_cast<uint16_t*>(dst.data);
  const bool bf16 = dst.dtype == DType::kBF16;
  ForRowPieces(rows, ctx, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      (bf16 ? NarrowBf16 : NarrowF16)(src + r * rows.len, base + rows.offset(r), rows.len);
    }
  });
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace attnkit::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {
HWY_EXPORT(Widen);
HWY_EXPORT(Narrow);

void widen(const ConstTensorView& src, float* dst, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(Widen)(src, dst, ctx);
}
void narrow(const float* src, const TensorView& dst, Context& ctx) {
  HWY_DYNAMIC_DISPATCH(Narrow)(src, dst, ctx);
}
}  // namespace attnkit::cpu
#endif
