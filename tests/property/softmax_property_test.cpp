// DESIGN.md section 5 properties that apply to exact softmax, on the fast kernel.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

TEST(SoftmaxProperty, WeightsSumToOne) {
  // With all values 1, every visible row outputs exactly a weighted sum of ones.
  Context ctx(2);
  Problem p({1, 100, 300, 2, 2, 32, 8}, 1);
  for (float& x : p.v.f32) x = 1.0f;
  make_mechanism("softmax", {.causal = true})->forward(p.args32(), ctx);
  for (float x : p.out.f32) EXPECT_NEAR(x, 1.0f, 2e-6f);
}

TEST(SoftmaxProperty, ShiftInvariance) {
  // Adding u to every key adds q.u to every logit of a row: the output is unchanged.
  Context ctx(2);
  Problem p({1, 70, 200, 1, 1, 16, 16}, 2), s = p;
  for (int64_t j = 0; j < 200; ++j)
    for (int64_t d = 0; d < 16; ++d) s.k.f32[j * 16 + d] += 0.25f * static_cast<float>(d % 3);
  make_mechanism("softmax")->forward(p.args32(), ctx);
  make_mechanism("softmax")->forward(s.args32(), ctx);
  for (size_t i = 0; i < p.out.f32.size(); ++i) EXPECT_NEAR(p.out.f32[i], s.out.f32[i], 2e-5f);
}

TEST(SoftmaxProperty, PermutingKeysWithValuesLeavesNonCausalOutput) {
  Context ctx(2);
  Problem p({1, 33, 150, 1, 1, 16, 16}, 3), s = p;
  std::vector<int> perm(150);
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937 rng(4);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int j = 0; j < 150; ++j) {
    std::memcpy(&s.k.f32[j * 16], &p.k.f32[perm[j] * 16], 16 * sizeof(float));
    std::memcpy(&s.v.f32[j * 16], &p.v.f32[perm[j] * 16], 16 * sizeof(float));
  }
  make_mechanism("softmax")->forward(p.args32(), ctx);
  make_mechanism("softmax")->forward(s.args32(), ctx);
  for (size_t i = 0; i < p.out.f32.size(); ++i) EXPECT_NEAR(p.out.f32[i], s.out.f32[i], 2e-6f);
}

TEST(SoftmaxProperty, BitwiseEqualAcrossThreadCounts) {
  Problem base({2, 200, 333, 4, 2, 64, 64}, 5);
  std::vector<std::vector<float>> outs;
  for (int threads : {1, 2, 7}) {
    Context ctx(threads);
    Problem p = base;
    make_mechanism("softmax", {.causal = true})->forward(p.args32(), ctx);
    outs.push_back(p.out.f32);
  }
  EXPECT_EQ(outs[0], outs[1]);
  EXPECT_EQ(outs[0], outs[2]);
}

TEST(SoftmaxProperty, StreamingEqualsLastRowOfCausal) {
  // Append token t, query q_t: row t of the causal forward (the KV cache path).
  check_streaming_matches_causal("softmax", "", 1e-6);
}

}  // namespace
}  // namespace attnkit::testing
