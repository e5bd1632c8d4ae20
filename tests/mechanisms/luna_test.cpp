// luna: the fast paths (two softmax-kernel calls; the causal running-average kernel)
// against the float64 reference, and streaming against causal.
#include "src/reference/reference.hpp"
#include "tests/testing/gradients.hpp"
#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

TEST(Luna, MatchesReferenceOverTheSweep) {
  for (int64_t l : {1, 5, 16}) {
    sweep_against_reference("luna", "", [](auto& a, auto& o) { ref::luna_ref(a, o); },
                            {.memory_len = l, .equal_dims = true});
  }
}

TEST(Luna, StreamingMatchesCausal) { check_streaming_matches_causal("luna", "", 1e-6, 6); }

TEST(Luna, BackwardKernelMatchesReference) {
  uint32_t seed = 800;
  for (bool causal : {false, true}) {
    for (Dims d : backward_dims()) {
      d.Dv = d.Dk;  // tied unpack
      for (int64_t memory_len : {1, 16}) {
        Problem p(d, seed++, Layout::kHeadMajorPadded, memory_len);
        p.key_lengths = std::vector<int32_t>(d.B, static_cast<int32_t>(d.Sk - 3));
        expect_kernel_gradients(*make_mechanism("luna", {.causal = causal}), p, seed++);
      }
    }
  }
}

TEST(Luna, BackwardWithoutMemoryGradientAndValidation) {
  Context ctx(1);
  Problem p({1, 20, 20, 2, 1, 8, 8}, 5, Layout::kContiguous, 4);
  Grads g(p, 6);
  const auto m = make_mechanism("luna", {.causal = true});
  m->forward(p.args32(), ctx);
  BackwardArgs a = g.args32(p);
  a.dmemory = TensorView{};  // the memory's gradient is optional
  m->backward(a, ctx);
  for (float x : g.dq.f32) ASSERT_TRUE(std::isfinite(x));
  a = g.args32(p);
  a.dmemory.shape[1] = 3;
  try {
    m->backward(a, ctx);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "dmemory: shape [1, 3, 2, 8] must equal memory shape [1, 4, 2, 8]");
  }
}

}  // namespace
}  // namespace attnkit::testing
