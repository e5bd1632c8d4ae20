// lara: the fast kernel against the float64 reference for every MIS weighting.
#include "src/reference/reference.hpp"
#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

TEST(Lara, MatchesReferenceOverTheSweep) {
  const char* mis[] = {"opt", "biased", "bh"};
  for (int m = 0; m < 3; ++m)
    for (int landmarks : {1, 7, 16}) {
      for (bool sample : {false, true}) {
        const LaraConfig c{
            .landmarks = landmarks, .mis = static_cast<LaraMis>(m), .sample = sample, .seed = 3};
        sweep_against_reference("lara",
                                "landmarks=" + std::to_string(landmarks) + ",mis=" + mis[m] +
                                    ",sample=" + (sample ? "1" : "0") + ",seed=3",
                                [c](auto& a, auto& o) { ref::lara_ref(a, o, c); },
                                {.c = 256, .causal = false});
      }
    }
}

}  // namespace
}  // namespace attnkit::testing
