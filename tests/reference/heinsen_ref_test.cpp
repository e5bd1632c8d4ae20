// heinsen_ref against closed forms (SPEC 5 "Tests to write").
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/gradients.hpp"
#include "tests/testing/harness.hpp"
#include "tests/testing/small.hpp"

namespace attnkit::testing {
namespace {

TEST(HeinsenRef, EqualsLinearAttentionWithExpFeatures) {
  // Heinsen's mechanism is linear attention with phi = exp and the kernel normaliser.
  for (bool causal : {false, true}) {
    Problem p({2, 9, 11, 4, 2, 5, 3}, 3), r = p;
    ref::heinsen_ref(p.args64(), {.causal = causal});
    ref::linear_ref(r.args64(), {.causal = causal},
                    {.map = FeatureMap::kExp, .norm = LinearNorm::kKernel});
    EXPECT_LE(compare(p.out, false, r.out).max_abs, 1e-13);
  }
}

TEST(HeinsenRef, SingleKeyAndLogitIsLseOfSum) {
  Small s({{0.1, 0.2}}, {{1.0, -1.0}, {0.0, 0.5}}, {{-2.0}, {3.0}});
  ref::heinsen_ref(s.args(), {});
  const double l0 = std::log(std::exp(1.1) + std::exp(-0.8)),
               l1 = std::log(std::exp(0.1) + std::exp(0.7));
  const double w0 = std::exp(l0), w1 = std::exp(l1);
  EXPECT_NEAR(s.o(0, 0), (-2.0 * w0 + 3.0 * w1) / (w0 + w1), 1e-15);  // V of any sign
  Small one({{5.0}}, {{-3.0}}, {{-4.0}});
  ref::heinsen_ref(one.args(), {});
  EXPECT_DOUBLE_EQ(one.o(0, 0), -4.0);
}

TEST(HeinsenRef, ShiftInvariances) {
  Problem p({1, 6, 6, 1, 1, 4, 4}, 5), shifted = p;
  // A scalar added to a whole query row, and one added to every key entry, cancel.
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t d = 0; d < 4; ++d) shifted.q.f64[i * 4 + d] += 0.7 * static_cast<double>(i);
  for (double& x : shifted.k.f64) x -= 1.3;
  ref::heinsen_ref(p.args64(), {.causal = true});
  ref::heinsen_ref(shifted.args64(), {.causal = true});
  EXPECT_LE(compare(p.out, false, shifted.out).max_abs, 1e-13);
}

TEST(HeinsenRef, HugeMagnitudesStayFinite) {
  Problem p({1, 8, 8, 1, 1, 4, 4}, 6);
  for (double& x : p.q.f64) x *= 1000.0;
  for (double& x : p.k.f64) x *= 1000.0;
  ref::heinsen_ref(p.args64(), {.causal = true});
  for (double x : p.out.f64) EXPECT_TRUE(std::isfinite(x));
}

TEST(HeinsenRef, BackwardEqualsCentralFiniteDifferences) {
  uint32_t seed = 40;
  for (bool causal : {false, true}) {
    for (const Dims& d : {Dims{1, 4, 4, 2, 1, 3, 2}, Dims{2, 3, 5, 1, 1, 2, 3}}) {
      Problem p(d, seed++);
      p.key_lengths = std::vector<int32_t>(d.B, static_cast<int32_t>(d.Sk - 1));
      expect_fd_gradients(*make_mechanism("heinsen", {.causal = causal}), p, seed++);
    }
  }
}

}  // namespace
}  // namespace attnkit::testing
