// rfa / performer: the log-feature kernel against the float64 reference (same projections).
#include "src/reference/reference.hpp"
#include "tests/testing/gradients.hpp"
#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

TEST(Rfa, MatchesReferenceOverTheSweep) {
  sweep_against_reference("rfa", "features=48,seed=5", [](auto& a, auto& o) {
    ref::rfa_ref(a, o, {.features = 48, .orthogonal = false, .seed = 5});
  });
}

TEST(Performer, MatchesReferenceOverTheSweep) {
  sweep_against_reference("performer", "features=70,seed=6", [](auto& a, auto& o) {
    ref::rfa_ref(a, o, {.features = 70, .orthogonal = true, .seed = 6});
  });
}

// The stream adds keys one at a time, the prefill by chunks (the projections as one
// matmul): the same sums in another order. A rounding of the log-features w.x - |x|^2/2
// (|.| ~ 10 here) moves each exp by ~10 eps, hence more than linear's 2e-6.
TEST(Rfa, StreamingMatchesCausal) {
  check_streaming_matches_causal("rfa", "features=32", 4e-6);
  check_streaming_matches_causal("performer", "features=64", 4e-6);
}

TEST(Rfa, BackwardKernelMatchesReference) {
  uint32_t seed = 600;
  for (const char* name : {"rfa", "performer"}) {
    for (bool causal : {false, true}) {
      for (const Dims& d : backward_dims()) {
        Problem p(d, seed++, Layout::kHeadMajorPadded);
        p.key_lengths = std::vector<int32_t>(d.B, static_cast<int32_t>(d.Sk - 3));
        expect_kernel_gradients(*make_mechanism(name, {.causal = causal}, "features=24"), p,
                                seed++);
      }
    }
  }
}

}  // namespace
}  // namespace attnkit::testing
