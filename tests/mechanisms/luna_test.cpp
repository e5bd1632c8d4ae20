// luna: the fast paths (two softmax-kernel calls; the causal running-average kernel)
// against the float64 reference, and streaming against causal.
#include "src/reference/reference.hpp"
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

}  // namespace
}  // namespace attnkit::testing
