// ra_ref: the unbiased estimator converges to exact softmax like 1/sqrt(samples).
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/harness.hpp"
#include "tests/testing/small.hpp"

namespace attnkit::testing {
namespace {

TEST(RaRef, SingleKeyIsExact) {
  Small s({{0.3, -0.2}}, {{0.5, 0.1}}, {{2.0, -1.0}});
  ref::ra_ref(s.args(), AttentionOptions{}, {.samples = 3});
  EXPECT_NEAR(s.o(0, 0), 2.0, 1e-14);
  EXPECT_NEAR(s.o(0, 1), -1.0, 1e-14);
}

double error_vs_softmax(int samples, bool causal) {
  Problem p({1, 6, 6, 1, 1, 4, 4}, 21), exact = p;
  ref::ra_ref(p.args64(), {.causal = causal}, {.samples = samples, .seed = 5});
  ref::softmax_ref(exact.args64(), {.causal = causal});
  return compare(p.out, false, exact.out).max_abs;
}

TEST(RaRef, MeanConvergesToSoftmaxAtMonteCarloRate) {
  for (bool causal : {false, true}) {
    const double e100 = error_vs_softmax(100, causal), e10k = error_vs_softmax(10000, causal);
    // 100x the samples: error / 10 expected; allow / 4 for Monte-Carlo noise.
    EXPECT_LT(e10k, e100 / 4) << "e100=" << e100 << " e10k=" << e10k;
    EXPECT_LT(e10k, 0.03);
  }
}

TEST(RaRef, PaddingKeysHaveNoInfluence) {
  Problem p({1, 4, 7, 1, 1, 4, 4}, 22), q = p;
  p.key_lengths = q.key_lengths = {4};
  for (int64_t j = 4; j < 7; ++j)
    for (int64_t d = 0; d < 4; ++d) q.k.f64[j * 4 + d] = q.v.f64[j * 4 + d] = 100.0;
  ref::ra_ref(p.args64(), AttentionOptions{}, {.samples = 5, .seed = 1});
  ref::ra_ref(q.args64(), AttentionOptions{}, {.samples = 5, .seed = 1});
  EXPECT_EQ(compare(p.out, false, q.out).max_abs, 0.0);
}

}  // namespace
}  // namespace attnkit::testing
