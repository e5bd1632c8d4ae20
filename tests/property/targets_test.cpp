// Every compiled SIMD target (AVX3, AVX2 and the portable fallback), not only the one this
// CPU dispatches to: each mechanism's float32 kernel, forward and backward, against its
// float64 reference, with the dispatch forced to one target at a time
// (Context::set_simd_target).
#include <algorithm>
#include <cmath>

#include "tests/testing/harness.hpp"

namespace attnkit::testing {
namespace {

// DESIGN.md's rule with the float64 result as the naive one: every target's float32 kernel
// (the fallbacks round their loops in other orders) within c eps max(|ref|, 1).
void expect_within(const Operand& got, const Operand& want, double c, const char* what) {
  const Report rep = compare(got, true, want);
  EXPECT_LE(rep.max_abs, allowed(Budget{.c = c}, 0.0, rep.ref_max)) << what << " " << rep.str();
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
      expect_within(p.out, r.out, 1024, "out");
      if (!m->capabilities().backward) continue;
      Grads g32(p, 3), g64(r, 3);
      m->backward(g32.args32(p), ctx);
      m->backward(g64.args64(r), ctx);
      expect_within(g32.dq, g64.dq, 8192, "dq");
      expect_within(g32.dk, g64.dk, 8192, "dk");
      expect_within(g32.dv, g64.dv, 8192, "dv");
    }
  }
  Context::set_simd_target("");  // back to the best the CPU supports
  EXPECT_EQ(Context::cpu_report().rfind("dispatch: " + targets.front(), 0), 0u);
  EXPECT_NE(error_of([] { Context::set_simd_target("NEON"); }).find("simd_target: 'NEON'"),
            std::string::npos);
}

}  // namespace
}  // namespace attnkit::testing
