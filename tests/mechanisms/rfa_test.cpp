// rfa / performer: the log-feature kernel against the float64 reference (same projections).
#include "src/reference/reference.hpp"
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

TEST(Rfa, StreamingMatchesCausal) {
  check_streaming_matches_causal("rfa", "features=32", 1e-6);
  check_streaming_matches_causal("performer", "features=64", 1e-6);
}

}  // namespace
}  // namespace attnkit::testing
