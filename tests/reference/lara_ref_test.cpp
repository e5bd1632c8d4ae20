// lara_ref: closed forms and the invariants of SPEC 2 "Tests to write".
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/harness.hpp"
#include "tests/testing/small.hpp"

namespace attnkit::testing {
namespace {

TEST(LaraRef, SingleLandmarkIsTheProposalStatistic) {
  // C = 1: w = qbar + kbar, out = sum_m softmax_m(s w.k_m - s|k_m|^2/2) v_m for every query.
  Small s({{1.0, 0.0}, {0.0, 1.0}}, {{1.0, 1.0}, {-1.0, 2.0}}, {{3.0}, {-1.0}});
  ref::lara_ref(s.args(), {.scale = 1.0}, {.landmarks = 1});
  const double w[2] = {0.5 + 0.0, 0.5 + 1.5};
  const double l0 = w[0] * 1 + w[1] * 1 - 1.0, l1 = -w[0] + 2 * w[1] - 2.5;
  const double want = (3.0 * std::exp(l0) - std::exp(l1)) / (std::exp(l0) + std::exp(l1));
  EXPECT_NEAR(s.o(0, 0), want, 1e-14);
  EXPECT_NEAR(s.o(1, 0), want, 1e-14);
}

TEST(LaraRef, ConstantValuesGiveThatConstant) {
  // Weights over proposals sum to one and each F_c is a convex combination of values.
  for (LaraMis mis : {LaraMis::kOpt, LaraMis::kBiased, LaraMis::kBalance}) {
    Problem p({2, 20, 30, 2, 1, 8, 3}, 31);
    for (double& x : p.v.f64) x = 2.5;
    ref::lara_ref(p.args64(), AttentionOptions{}, {.landmarks = 5, .mis = mis});
    for (double x : p.out.f64) EXPECT_NEAR(x, 2.5, 1e-12);
  }
}

TEST(LaraRef, PaddingKeysHaveNoInfluence) {
  Problem p({1, 10, 14, 1, 1, 4, 4}, 32), q = p;
  p.key_lengths = q.key_lengths = {9};
  for (int64_t j = 9; j < 14; ++j)
    for (int64_t d = 0; d < 4; ++d) q.k.f64[j * 4 + d] = q.v.f64[j * 4 + d] = -50.0;
  ref::lara_ref(p.args64(), AttentionOptions{}, {.landmarks = 3});
  ref::lara_ref(q.args64(), AttentionOptions{}, {.landmarks = 3});
  EXPECT_EQ(compare(p.out, false, q.out).max_abs, 0.0);
}

TEST(LaraRef, PermutingKeysWithinASegmentChangesNothing) {
  // 12 keys, 3 landmarks: segments [0,4), [4,8), [8,12). Swap keys 5 and 6 with their values.
  Problem p({1, 12, 12, 1, 1, 4, 2}, 33), q = p;
  for (int64_t d = 0; d < 4; ++d) std::swap(q.k.f64[5 * 4 + d], q.k.f64[6 * 4 + d]);
  for (int64_t d = 0; d < 2; ++d) std::swap(q.v.f64[5 * 2 + d], q.v.f64[6 * 2 + d]);
  ref::lara_ref(p.args64(), AttentionOptions{}, {.landmarks = 3});
  ref::lara_ref(q.args64(), AttentionOptions{}, {.landmarks = 3});
  EXPECT_LE(compare(p.out, false, q.out).max_abs, 1e-14);
}

TEST(LaraRef, MoreLandmarksThanTokensUsesTheTokens) {
  Problem p({1, 3, 3, 1, 1, 4, 4}, 34), q = p;
  ref::lara_ref(p.args64(), AttentionOptions{}, {.landmarks = 16});
  ref::lara_ref(q.args64(), AttentionOptions{}, {.landmarks = 3});
  EXPECT_EQ(compare(p.out, false, q.out).max_abs, 0.0);
}

TEST(LaraRef, SamplingIsSeededAndEvalIsDeterministic) {
  Problem a({1, 10, 10, 1, 1, 4, 4}, 35), b = a, c = a;
  ref::lara_ref(a.args64(), AttentionOptions{}, {.landmarks = 4, .sample = true, .seed = 1});
  ref::lara_ref(b.args64(), AttentionOptions{}, {.landmarks = 4, .sample = true, .seed = 1});
  ref::lara_ref(c.args64(), AttentionOptions{}, {.landmarks = 4, .sample = true, .seed = 2});
  EXPECT_EQ(compare(a.out, false, b.out).max_abs, 0.0);
  EXPECT_GT(compare(a.out, false, c.out).max_abs, 0.0);
}

}  // namespace
}  // namespace attnkit::testing
