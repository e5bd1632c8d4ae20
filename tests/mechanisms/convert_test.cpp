// The narrow dtypes' conversions: the scalar ones (include/attnkit/tensor.hpp) against closed
// forms, and the SIMD ones (src/cpu/convert.cpp) against the scalar ones on every compiled
// target, every float16 and bfloat16 bit pattern and strided views.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "src/cpu/kernels.hpp"
#include "tests/testing/harness.hpp"

namespace attnkit::testing {
namespace {

// binary16's value from its fields, in double.
double f16_closed_form(uint16_t h) {
  const int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  const double s = sign ? -1.0 : 1.0;
  if (e == 31) return m ? std::numeric_limits<double>::quiet_NaN() : s * INFINITY;
  return e == 0 ? s * std::ldexp(m, -24) : s * std::ldexp(1024 + m, e - 25);
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

TEST(Convert, Float16WidensToItsValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const double want = f16_closed_form(static_cast<uint16_t>(h));
    const float got = to_float(float16{static_cast<uint16_t>(h)});
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << h;
      EXPECT_EQ(std::signbit(got), (h >> 15) != 0) << h;  // -0 stays -0
    }
  }
}

TEST(Convert, Float16RoundsToNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const double x = f16_closed_form(static_cast<uint16_t>(h));
    if (std::isnan(x)) {
      EXPECT_EQ(to_float16(static_cast<float>(x)).bits & 0x7c00u, 0x7c00u);
      EXPECT_NE(to_float16(static_cast<float>(x)).bits & 0x3ffu, 0u) << "NaN must stay NaN";
      continue;
    }
    ASSERT_EQ(to_float16(static_cast<float>(x)).bits, h) << "round trip of " << x;
    // The midpoint to the next value up in magnitude (exact in float32: 12 bits) rounds to
    // the even one of the two; a hair either side rounds to the nearer.
    if ((h & 0x7fffu) >= 0x7bffu) continue;  // 65504's midpoint is covered below
    const double next = f16_closed_form(static_cast<uint16_t>(h + 1)), mid = (x + next) / 2;
    const uint16_t even = (h & 1u) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    ASSERT_EQ(to_float16(static_cast<float>(mid)).bits, even) << mid;
    const float below = std::nextafter(static_cast<float>(mid), static_cast<float>(x));
    const float above = std::nextafter(static_cast<float>(mid), static_cast<float>(next));
    ASSERT_EQ(to_float16(below).bits, h) << below;
    ASSERT_EQ(to_float16(above).bits, h + 1) << above;
  }
  EXPECT_EQ(to_float16(65519.99f).bits, 0x7bffu);  // 65504
  EXPECT_EQ(to_float16(65520.0f).bits, 0x7c00u);   // the midpoint to 2^16 rounds away: Inf
  EXPECT_EQ(to_float16(-1e30f).bits, 0xfc00u);
  EXPECT_EQ(to_float16(INFINITY).bits, 0x7c00u);
  EXPECT_EQ(to_float16(0x1p-25f).bits, 0u);         // half the smallest subnormal: to even
  EXPECT_EQ(to_float16(0x1.000002p-25f).bits, 1u);  // just above it: up
}

TEST(Convert, Bfloat16RoundsToNearestEven) {
  EXPECT_EQ(to_bfloat16(1.0f + 0x1p-8f).bits, to_bfloat16(1.0f).bits);  // tie to even (down)
  EXPECT_EQ(to_bfloat16(1.0f + 3 * 0x1p-8f).bits, to_bfloat16(1.0f + 0x1p-6f).bits);  // up
  EXPECT_EQ(to_bfloat16(1.0f + 0x1.02p-8f).bits, to_bfloat16(1.0f + 0x1p-7f).bits);
  EXPECT_TRUE(std::isnan(to_float(to_bfloat16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(to_bfloat16(3.4e38f).bits, 0x7f80u);  // past the largest bfloat16: Inf
}

// Widen and narrow on every compiled target equal the scalar conversions, bit for bit, on a
// strided [2, 3, 5, 65536 / 30 + 1] view (rows 8 elements apart) holding every bit pattern.
TEST(Convert, SimdConversionsEqualTheScalarOnesOnEveryTarget) {
  Context ctx(2);
  ctx.set_min_parallel_work(0);
  const int64_t len = 65536 / 30 + 1, pitch = len + 8;
  std::vector<uint16_t> narrow(2 * 3 * 5 * pitch, 0xdead);
  TensorView v;
  v.data = narrow.data();
  v.rank = 4;
  v.shape = {2, 3, 5, len};
  v.stride = {15 * pitch, 5 * pitch, pitch, 1};
  std::vector<float> wide(2 * 3 * 5 * len);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mag(-40.0f, 20.0f);
  for (size_t i = 0; i < wide.size(); ++i) {  // specials, then both signs over many octaves
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65520.0f, 1e-8f};
    wide[i] = i < 8 ? specials[i] : (i % 2 ? -1.0f : 1.0f) * std::exp2(mag(rng));
  }
  for (const std::string& target : Context::simd_targets()) {
    Context::set_simd_target(target);
    for (DType t : {DType::kBF16, DType::kF16}) {
      SCOPED_TRACE(target + " " + dtype_name(t));
      v.dtype = t;
      for (int64_t r = 0; r < 30; ++r)
        for (int64_t c = 0; c < len; ++c)
          narrow[r * pitch + c] = static_cast<uint16_t>(r * len + c);
      std::vector<float> got(wide.size());
      cpu::widen(as_const(v), got.data(), ctx);
      int64_t bad = 0;
      for (int64_t i = 0; i < 30 * len; ++i) {
        const uint16_t h = static_cast<uint16_t>(i);
        const float want = from_narrow_bits(h, t);
        bad += bits_of(got[i]) != bits_of(want) && !(std::isnan(got[i]) && std::isnan(want));
      }
      EXPECT_EQ(bad, 0) << "widened elements differ from the scalar conversion";
      cpu::narrow(wide.data(), v, ctx);
      bad = 0;
      for (int64_t r = 0; r < 30; ++r) {
        for (int64_t c = 0; c < len; ++c) {
          const float x = wide[r * len + c];
          const uint16_t want = to_narrow_bits(x, t);
          bad += narrow[r * pitch + c] != want;
        }
        for (int64_t c = len; c < pitch; ++c) bad += narrow[r * pitch + c] != 0xdead;  // padding
      }
      EXPECT_EQ(bad, 0) << "narrowed elements differ from the scalar conversion";
    }
  }
  Context::set_simd_target("");
}

}  // namespace
}  // namespace attnkit::testing
