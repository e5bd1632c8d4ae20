// Every compiled SIMD target (AVX3, AVX2 and the portable fallback), not only the one this
// CPU dispatches to: each mechanism's float32 kernel, forward and backward, against its
// float64 reference, with the dispatch forced to one target at a time
// (Context::set_simd_target).
#include <algorithm>
#include <cmath>

#include "tests/testing/harness.hpp"

namespace attnkit::testing {
namespace {

double max_abs_rel(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return err / scale;
}

TEST(TargetsProperty, EveryCompiledTargetMatchesTheReference) {
  Context ctx(2);
  const std::vector<std::string> targets = Context::simd_targets();
  ASSERT_GE(targets.size(), 2u) << "expected more than one compiled target";
  for (const std::string& target : targets) {
    Context::set_simd_target(target);
    SCOPED_TRACE(target);
    ASSERT_EQ(Context::cpu_report().rfind("dispatch: " + target, 0), 0u) << Context::cpu_report();
    for (const std::string& name : mechanism_names()) {
      const auto probe = make_mechanism(name);
      const bool causal = probe->capabilities().causal;
      const auto m = make_mechanism(name, {.causal = causal},
                                    name == "linear" ? "map=elu1,norm=kernel,chunk=16" : "");
      SCOPED_TRACE(m->describe());
      const int64_t mem = m->capabilities().needs_memory ? 5 : 0;
      const bool square = name == "memory" || name == "luna";
      Problem p({2, 37, square ? 37 : 53, 4, 2, 24, 24}, 11, Layout::kHeadMajorPadded, mem);
      Problem r = p;
      m->forward(p.args32(), ctx);
      m->forward(r.args64(), ctx);
      EXPECT_LE(max_abs_rel(p.out.f32, r.out.f64), 1e-4);
      if (!m->capabilities().backward) continue;
      Grads g32(p, 3), g64(r, 3);
      m->backward(g32.args32(p), ctx);
      m->backward(g64.args64(r), ctx);
      EXPECT_LE(max_abs_rel(g32.dq.f32, g64.dq.f64), 1e-3) << "dq";
      EXPECT_LE(max_abs_rel(g32.dk.f32, g64.dk.f64), 1e-3) << "dk";
      EXPECT_LE(max_abs_rel(g32.dv.f32, g64.dv.f64), 1e-3) << "dv";
    }
  }
  Context::set_simd_target("");  // back to the best the CPU supports
  EXPECT_EQ(Context::cpu_report().rfind("dispatch: " + targets.front(), 0), 0u);
  EXPECT_NE(error_of([] { Context::set_simd_target("NEON"); }).find("simd_target: 'NEON'"),
            std::string::npos);
}

}  // namespace
}  // namespace attnkit::testing
