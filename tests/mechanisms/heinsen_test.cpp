// heinsen: the log-space kernel against the quadratic float64 reference.
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

TEST(Heinsen, MatchesReferenceOverTheSweep) {
  sweep_against_reference("heinsen", "", [](auto& a, auto& o) { ref::heinsen_ref(a, o); });
}

TEST(Heinsen, NoOverflowAtMagnitudeOneThousand) {
  // Naive exp(q).exp(k) overflows float32 beyond |x| ~ 88; the log-space kernel does not.
  Context ctx(2);
  for (bool causal : {false, true}) {
    Problem p({1, 64, 64, 2, 2, 16, 16}, 3), r = p;
    for (Problem* x : {&p, &r}) {
      for (float& e : x->q.f32) e *= 1000.0f;
      for (float& e : x->k.f32) e *= 1000.0f;
      for (size_t i = 0; i < x->q.f64.size(); ++i) x->q.f64[i] = x->q.f32[i];
      for (size_t i = 0; i < x->k.f64.size(); ++i) x->k.f64[i] = x->k.f32[i];
    }
    make_mechanism("heinsen", {.causal = causal})->forward(p.args32(), ctx);
    ref::heinsen_ref(r.args64(), {.causal = causal});
    for (float x : p.out.f32) ASSERT_TRUE(std::isfinite(x));
    // Logits of size ~2e3 carry float32 rounding of ~2e3 * 6e-8 = 1.2e-4 in the exponent.
    EXPECT_LE(compare(p.out, true, r.out).max_abs, 2e-3) << (causal ? "causal" : "");
  }
}

TEST(Heinsen, StreamingMatchesCausal) { check_streaming_matches_causal("heinsen", "", 1e-6); }

}  // namespace
}  // namespace attnkit::testing
