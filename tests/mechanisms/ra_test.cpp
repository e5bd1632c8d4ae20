// ra: the fast kernel reproduces the reference's draws; its mean converges to softmax.
#include "src/reference/reference.hpp"
#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

TEST(Ra, MatchesReferenceOverTheSweep) {
  for (int samples : {1, 3}) {
    sweep_against_reference(
        "ra", "samples=" + std::to_string(samples) + ",seed=9",
        [samples](auto& a, auto& o) { ref::ra_ref(a, o, {.samples = samples, .seed = 9}); });
  }
}

TEST(Ra, ErrorFallsLikeOneOverSqrtSamples) {
  Context ctx(2);
  auto error = [&](int samples) {
    Problem p({1, 16, 16, 2, 2, 8, 8}, 4), r = p;
    make_mechanism("ra", {.causal = true}, "samples=" + std::to_string(samples))
        ->forward(p.args32(), ctx);
    ref::softmax_ref(r.args64(), {.causal = true});
    return compare(p.out, true, r.out).max_abs;
  };
  const double e64 = error(64), e6400 = error(6400);
  EXPECT_LT(e6400, e64 / 4) << "e64=" << e64 << " e6400=" << e6400;  // 1/sqrt(100) = 1/10 expected
  EXPECT_LT(e6400, 0.05);
}

}  // namespace
}  // namespace attnkit::testing
