// luna_ref against closed forms (SPEC 4 "Tests to write").
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/harness.hpp"
#include "tests/testing/small.hpp"
#include "tests/testing/gradients.hpp"

namespace attnkit::testing {
namespace {

TEST(LunaRef, OneMemoryRowUnpacksToThePackedRow) {
  // l = 1: unpack softmax over one row returns it; pack over identical keys averages v.
  Small s({{1.0, 2.0}, {-3.0, 0.5}}, {{0.2, 0.2}, {0.2, 0.2}, {0.2, 0.2}},
          {{1.0, 0.0}, {2.0, 4.0}, {6.0, 2.0}});
  s.set_memory({{0.7, -0.1}});
  ref::luna_ref(s.args(), {});
  for (int i = 0; i < 2; ++i) {
    EXPECT_NEAR(s.o(i, 0), 3.0, 1e-14);
    EXPECT_NEAR(s.o(i, 1), 2.0, 1e-14);
  }
  EXPECT_NEAR(s.memory_out[0], 3.0, 1e-14);
  EXPECT_NEAR(s.memory_out[1], 2.0, 1e-14);
}

TEST(LunaRef, UnpackIsSoftmaxOverPackedMemory) {
  Problem p({1, 5, 7, 1, 1, 4, 4}, 51, Layout::kContiguous, 3);
  ref::luna_ref(p.args64(), {});
  // Rebuild: unpack = softmax attention of q over keys = values = memory_out.
  Problem u = p;
  u.k = u.memory_out, u.v = u.memory_out;
  u.d.Sk = 3;
  ref::softmax_ref(u.args64(), AttentionOptions{});
  EXPECT_LE(compare(p.out, false, u.out).max_abs, 1e-14);
}

TEST(LunaRef, CausalZeroMemoryIsPrefixMean) {
  // p = 0 gives a = softplus_ln2(0) = 1, so Yp_t = mean of v_{<=t}; with l = 1, out_t = Yp_t.
  Small s({{1.0}, {2.0}, {3.0}}, {{0.5}, {-1.0}, {2.0}}, {{3.0}, {5.0}, {-2.0}});
  s.set_memory({{0.0}});
  ref::luna_ref(s.args(), {.causal = true});
  EXPECT_NEAR(s.o(0, 0), 3.0, 1e-14);
  EXPECT_NEAR(s.o(1, 0), 4.0, 1e-14);
  EXPECT_NEAR(s.o(2, 0), 2.0, 1e-14);
  EXPECT_NEAR(s.memory_out[0], 2.0, 1e-14);
}

TEST(LunaRef, CausalSoftplusWeights) {
  // One key, l = 1: Yp = a v with a = log2(1 + 2^z), z = s k.p.
  Small s({{1.0}}, {{2.0}}, {{3.0}});
  s.set_memory({{1.5}});
  ref::luna_ref(s.args(), {.scale = 1.0, .causal = true});
  EXPECT_NEAR(s.o(0, 0), std::log2(1.0 + std::exp2(3.0)) * 3.0, 1e-13);
}

TEST(LunaRef, PaddingHasNoEffectOnPackedMemory) {
  Problem p({1, 4, 9, 1, 1, 4, 4}, 52, Layout::kContiguous, 2), q = p;
  p.key_lengths = q.key_lengths = {6};
  for (int64_t j = 6; j < 9; ++j)
    for (int64_t d = 0; d < 4; ++d) q.k.f64[j * 4 + d] = q.v.f64[j * 4 + d] = 9.0;
  for (bool causal : {false, true}) {
    ref::luna_ref(p.args64(), {.causal = causal});
    ref::luna_ref(q.args64(), {.causal = causal});
    EXPECT_EQ(compare(p.memory_out, false, q.memory_out).max_abs, 0.0);
  }
}

TEST(LunaRef, BackwardEqualsCentralFiniteDifferencesIncludingMemory) {
  uint32_t seed = 90;
  for (bool causal : {false, true}) {
    for (const Dims& d : {Dims{1, 4, 4, 2, 1, 3, 3}, Dims{2, 3, 5, 1, 1, 2, 2}}) {
      Problem p(d, seed++, Layout::kContiguous, /*memory_len=*/3);
      p.key_lengths = std::vector<int32_t>(d.B, static_cast<int32_t>(d.Sk - 1));
      expect_fd_gradients(*make_mechanism("luna", {.causal = causal}), p, seed++);
    }
  }
}

}  // namespace
}  // namespace attnkit::testing
