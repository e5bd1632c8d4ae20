// Every fixed-size streaming state stays the same size as tokens are appended (to 100k).
#include "tests/testing/harness.hpp"

namespace attnkit::testing {
namespace {

TEST(StreamingProperty, FixedStatesStayConstantTo100kTokens) {
  Context ctx(2);
  const int64_t chunk = 2000, D = 32;
  Problem p({1, chunk, chunk, 2, 1, D, D}, 9, Layout::kContiguous, 4);
  std::vector<float> out(2 * D);
  for (const std::string& name : mechanism_names()) {
    const auto m = make_mechanism(name);  // streams do not depend on the causal option
    if (!m->capabilities().streaming || name == "softmax") continue;
    SCOPED_TRACE(name);
    StreamSpec spec{.batch = 1, .heads = 2, .kv_heads = 1, .head_dim = D, .value_dim = D};
    if (m->capabilities().needs_memory) spec.memory = p.memory.view32();
    auto s = m->new_stream(spec);
    const size_t bytes = s->state_bytes();
    ConstTensorView q1 = p.q.view32();
    q1.shape[1] = 1;
    for (int64_t t = 0; t < 100000; t += chunk) {
      s->append(p.k.view32(), p.v.view32(), ctx);
      ASSERT_EQ(s->state_bytes(), bytes) << "after " << t + chunk << " tokens";
    }
    s->query(q1, make_view(out.data(), {1, 1, 2, D}), ctx);
    for (float x : out) EXPECT_TRUE(std::isfinite(x));
    EXPECT_EQ(s->length(), 100000);
    EXPECT_LT(bytes, 64u * 1024u) << "a fixed state, not a cache";
  }
}

}  // namespace
}  // namespace attnkit::testing
