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
    if (!m->capabilities().streaming || m->capabilities().kv_cache) continue;
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
    // A KV cache of the 100k tokens would take 25.6 MB; memory's (one chunk's buffer) is the
    // largest fixed state, ~100 kB at its default chunk.
    EXPECT_LT(bytes, 256u * 1024u) << "a fixed state, not a cache";
  }
}

// The KV-cache streams (softmax, and topk: top-k over the cache) with each mechanism's config.
const std::pair<const char*, const char*> kCacheStreams[] = {{"softmax", ""}, {"topk", "k=5"}};

// A windowed KV-cache stream (a ring of window + 1 tokens) decodes as the last row of the
// causal forward with that sliding window, token by token past the ring's wrap, appending 1 or
// 3 tokens at a time, with a constant state.
TEST(StreamingProperty, WindowedCacheStreamIsARingAndMatchesTheWindowedForward) {
  Context ctx(2);
  const int64_t S = 40, D = 8, window = 6;
  Problem p({2, S, S, 4, 2, D, D}, 21);
  for (int64_t step : {1, 3})
    for (const auto& [name, config] : kCacheStreams) {
      const auto m = make_mechanism(name, {.causal = true}, config);
      SCOPED_TRACE(std::string(name) + " append " + std::to_string(step));
      auto s = m->new_stream(
          {.batch = 2, .heads = 4, .kv_heads = 2, .head_dim = D, .value_dim = D, .window = window});
      const size_t bytes = s->state_bytes();
      for (int64_t t = step; t <= S; t += step) {
        ConstTensorView k = p.k.view32(), v = p.v.view32(), q = p.q.view32();
        k.shape[1] = v.shape[1] = step, q.shape[1] = 1;
        k.data = k.row<const float>(0, t - step, 0), v.data = v.row<const float>(0, t - step, 0);
        q.data = q.row<const float>(0, t - 1, 0);
        s->append(k, v, ctx);
        std::vector<float> got(2 * 4 * D);
        s->query(q, make_view(got.data(), {2, 1, 4, D}), ctx);
        // The forward over the first t tokens; its last row.
        Problem f = p;
        AttentionArgs a = f.args32();
        a.q.shape[1] = a.k.shape[1] = a.v.shape[1] = a.out.shape[1] = t;
        a.mask.window_left = window;
        m->forward(a, ctx);
        for (int64_t b = 0; b < 2; ++b)
          for (int64_t h = 0; h < 4; ++h)
            for (int64_t x = 0; x < D; ++x)
              ASSERT_NEAR(got[(b * 4 + h) * D + x], a.out.row<float>(b, t - 1, h)[x], 2e-6)
                  << "token " << t;
        ASSERT_EQ(s->state_bytes(), bytes);
      }
      EXPECT_EQ(s->length(), S / step * step);
    }
  // Streams without a KV cache refuse a window and the logit masks, by name.
  EXPECT_EQ(
      error_of([&] {
        make_mechanism("linear")->new_stream(
            {.batch = 1, .heads = 1, .kv_heads = 1, .head_dim = 4, .value_dim = 4, .window = 3});
      }),
      "window: only a KV-cache stream (softmax, topk) keeps a sliding window");
  EXPECT_EQ(
      error_of([&] {
        make_mechanism("heinsen")->new_stream(
            {.batch = 1, .heads = 1, .kv_heads = 1, .head_dim = 4, .value_dim = 4, .softcap = 2.0});
      }),
      "stream: softcap and alibi_slopes are only for a KV-cache stream (softmax, topk)");
}

// Softcap and ALiBi in a KV-cache stream: each decode step equals the last row of the causal
// forward with the same masks, and a 3-row query the forward of those rows at the last
// positions over every token; softcap also on a window's ring.
TEST(StreamingProperty, CacheStreamLogitMasksMatchTheMaskedForward) {
  Context ctx(2);
  const int64_t S = 30, D = 8;
  Problem p({2, S, S, 4, 2, D, D}, 23);
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  for (const auto& [name, config] : kCacheStreams)
    for (const int64_t window : {int64_t{-1}, int64_t{7}}) {
      const auto m = make_mechanism(name, {.causal = true}, config);
      SCOPED_TRACE(std::string(name) + " window " + std::to_string(window));
      StreamSpec spec{.batch = 2,
                      .heads = 4,
                      .kv_heads = 2,
                      .head_dim = D,
                      .value_dim = D,
                      .window = window,
                      .softcap = 1.5};
      if (window < 0) spec.alibi_slopes = make_view(slopes.data(), {4});
      auto st = m->new_stream(spec);
      for (int64_t t = 1; t <= S; ++t) {
        ConstTensorView k = p.k.view32(), v = p.v.view32(), q = p.q.view32();
        k.shape[1] = v.shape[1] = 1;
        k.data = k.row<const float>(0, t - 1, 0), v.data = v.row<const float>(0, t - 1, 0);
        st->append(k, v, ctx);
        const int64_t tq = std::min<int64_t>(t, t % 5 == 0 && window < 0 ? 3 : 1);
        q.shape[1] = tq;
        q.data = q.row<const float>(0, t - tq, 0);
        std::vector<float> got(2 * tq * 4 * D);
        st->query(q, make_view(got.data(), {2, tq, 4, D}), ctx);
        // The forward over t tokens: causal for one row; for tq rows, non-causal rows at the
        // last positions (a stream's rows all see every cached token).
        Problem f = p;
        AttentionArgs a = f.args32();
        a.q.shape[1] = a.k.shape[1] = a.v.shape[1] = a.out.shape[1] = t;
        a.mask.softcap = 1.5;
        a.mask.window_left = window;
        if (window < 0) a.mask.alibi_slopes = make_view(slopes.data(), {4});
        const std::vector<int32_t> last(2, static_cast<int32_t>(t - tq));
        if (tq > 1) {  // rows [t - tq, t) only, at their positions
          a.q.data = a.q.row<const float>(0, t - tq, 0), a.q.shape[1] = tq;
          a.out.data = a.out.row<float>(0, t - tq, 0), a.out.shape[1] = tq;
          a.mask.query_positions = last;
        }
        make_mechanism(name, {.causal = tq == 1}, config)->forward(a, ctx);
        for (int64_t b = 0; b < 2; ++b)
          for (int64_t r = 0; r < tq; ++r)
            for (int64_t h = 0; h < 4; ++h)
              for (int64_t x = 0; x < D; ++x)
                ASSERT_NEAR(got[((b * tq + r) * 4 + h) * D + x],
                            a.out.row<float>(b, tq == 1 ? t - 1 : r, h)[x], 2e-6)
                    << "token " << t;
      }
    }
  StreamSpec ring{
      .batch = 1, .heads = 4, .kv_heads = 2, .head_dim = D, .value_dim = D, .window = 3};
  ring.alibi_slopes = make_view(slopes.data(), {4});
  EXPECT_EQ(error_of([&] { make_mechanism("softmax")->new_stream(ring); }),
            "alibi_slopes: needs every token's position; a window's ring has none");
}

}  // namespace
}  // namespace attnkit::testing
