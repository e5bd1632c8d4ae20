// topk_ref and topk_ff_ref against closed forms (SPEC 3 "Tests to write").
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/harness.hpp"
#include "tests/testing/small.hpp"
#include "tests/testing/gradients.hpp"

namespace attnkit::testing {
namespace {

TEST(TopkRef, KAtLeastKeysIsExactSoftmax) {
  for (bool causal : {false, true}) {
    Problem p({2, 9, 9, 2, 1, 8, 8}, 41), r = p;
    ref::topk_ref(p.args64(), {.causal = causal}, {.k = 9});
    ref::softmax_ref(r.args64(), {.causal = causal});
    EXPECT_LE(compare(p.out, false, r.out).max_abs, 1e-15);
  }
}

TEST(TopkRef, HandComputedKOfThree) {
  Small s({{1.0}}, {{3.0}, {1.0}, {2.0}}, {{10.0}, {20.0}, {30.0}});
  ref::topk_ref(s.args(), {.scale = 1.0}, {.k = 1});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 10.0);  // the argmax key's value
  ref::topk_ref(s.args(), {.scale = 1.0}, {.k = 2});
  const double w0 = std::exp(3.0), w2 = std::exp(2.0);
  EXPECT_NEAR(s.o(0, 0), (10.0 * w0 + 30.0 * w2) / (w0 + w2), 1e-13);
}

TEST(TopkRef, EarlyCausalRowsAreExact) {
  Problem p({1, 10, 10, 1, 1, 8, 8}, 42), r = p;
  ref::topk_ref(p.args64(), {.causal = true}, {.k = 4});
  ref::softmax_ref(r.args64(), {.causal = true});
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t d = 0; d < 8; ++d) EXPECT_NEAR(p.out.f64[i * 8 + d], r.out.f64[i * 8 + d], 1e-15);
}

TEST(TopkFfRef, FullKIsDenseReluFeedForward) {
  Tensor<double> x({3, 4}), keys({5, 4}), values({5, 2}), out({3, 2});
  std::mt19937 rng(43);
  std::normal_distribution<double> n;
  for (auto* t : {&x, &keys, &values})
    for (double& e : t->vec()) e = n(rng);
  ref::topk_ff_ref(x.cview(), keys.cview(), values.cview(), out.view(), 5);
  for (int t = 0; t < 3; ++t)
    for (int d = 0; d < 2; ++d) {
      double want = 0;
      for (int j = 0; j < 5; ++j) {
        double s = 0;
        for (int c = 0; c < 4; ++c) s += x[t * 4 + c] * keys[j * 4 + c];
        want += std::max(s, 0.0) * values[j * 2 + d];
      }
      EXPECT_NEAR(out[t * 2 + d], want, 1e-14);
    }
  // k = 1 keeps only the largest activation.
  Tensor<double> x1({1, 1}), k1({3, 1}), v1({3, 1}), o1({1, 1});
  x1[0] = 2.0, k1[0] = 1.0, k1[1] = 3.0, k1[2] = -5.0, v1[0] = 1.0, v1[1] = 10.0, v1[2] = 100.0;
  ref::topk_ff_ref(x1.cview(), k1.cview(), v1.cview(), o1.view(), 1);
  EXPECT_DOUBLE_EQ(o1[0], 60.0);
}

TEST(TopkRef, BackwardEqualsCentralFiniteDifferences) {
  uint32_t seed = 70;
  for (bool causal : {false, true}) {
    for (const char* config : {"k=2", "k=1", "k=9"}) {
      Problem p({2, 4, 5, 2, 1, 3, 2}, seed++);
      p.key_lengths = {5, 4};
      expect_fd_gradients(*make_mechanism("topk", {.causal = causal}, config), p, seed++);
    }
  }
}

}  // namespace
}  // namespace attnkit::testing
