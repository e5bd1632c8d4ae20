// linear_ref against closed forms (SPEC 1 "Tests to write").
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/harness.hpp"
#include "tests/testing/small.hpp"

namespace attnkit::testing {
namespace {

Small two_tokens() {
  return Small({{1.0, 2.0}}, {{1.0, 0.0}, {0.0, 1.0}}, {{1.0, 1.0}, {2.0, 3.0}});
}

TEST(LinearRef, CqEqualsSumOfScoredValues) {
  // r = sum_t (k_t . q) v_t = 1 * [1, 1] + 2 * [2, 3].
  Small s = two_tokens();
  ref::linear_ref(s.args(), {}, {});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 5.0);
  EXPECT_DOUBLE_EQ(s.o(0, 1), 7.0);
}

TEST(LinearRef, Normalisers) {
  Small s = two_tokens();
  ref::linear_ref(s.args(), {}, {.norm = LinearNorm::kLength});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 2.5);
  ref::linear_ref(s.args(), {}, {.norm = LinearNorm::kFixed1000});
  EXPECT_DOUBLE_EQ(s.o(0, 1), 3500.0);
  ref::linear_ref(s.args(), {}, {.feature_map = FeatureMap::kRelu, .norm = LinearNorm::kKernel});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 5.0 / 3.0);  // z = q . (k_0 + k_1) = 3
  EXPECT_DOUBLE_EQ(s.o(0, 1), 7.0 / 3.0);
}

TEST(LinearRef, FeatureMaps) {
  Small s({{-1.0}}, {{1.0}}, {{1.0}});
  ref::linear_ref(s.args(), {}, {.feature_map = FeatureMap::kEluPlusOne});
  EXPECT_DOUBLE_EQ(s.o(0, 0), std::exp(-1.0) * 2.0);
  ref::linear_ref(s.args(), {}, {.feature_map = FeatureMap::kRelu});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 0.0);
  ref::linear_ref(s.args(), {}, {.feature_map = FeatureMap::kExp});
  EXPECT_DOUBLE_EQ(s.o(0, 0), std::exp(-1.0) * std::exp(1.0));
}

TEST(LinearRef, GateOfOneScalesBySigmoidSquared) {
  Small s = two_tokens();
  Tensor<double> gate({1, 2, 1});
  gate[0] = gate[1] = 1.0;
  AttentionArgs a = s.args();
  a.gate = gate.cview();
  ref::linear_ref(a, {}, {.gated = true});
  const double u = 1.0 / (1.0 + std::exp(-1.0));
  EXPECT_NEAR(s.o(0, 0), u * u * 5.0, 1e-14);
  EXPECT_NEAR(s.o(0, 1), u * u * 7.0, 1e-14);
}

TEST(LinearRef, CausalRowsArePrefixesAndPaddingIsIgnored) {
  Small s({{1.0, 2.0}, {1.0, 2.0}}, {{1.0, 0.0}, {0.0, 1.0}}, {{1.0, 1.0}, {2.0, 3.0}});
  ref::linear_ref(s.args(), {.causal = true}, {});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 1.0);  // only token 0
  EXPECT_DOUBLE_EQ(s.o(1, 0), 5.0);
  const int32_t len[] = {1};
  AttentionArgs a = s.args();
  a.key_lengths = len;
  ref::linear_ref(a, {}, {});
  EXPECT_DOUBLE_EQ(s.o(1, 1), 1.0);
}

}  // namespace
}  // namespace attnkit::testing
