// topk: the fast kernel against the float64 reference; top-k feed-forward.
#include "src/reference/reference.hpp"
#include "tests/testing/gradients.hpp"
#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

TEST(Topk, MatchesReferenceOverTheSweep) {
  for (int k : {1, 5, 32, 1000}) {
    sweep_against_reference(
        "topk", "k=" + std::to_string(k) + ",query_chunk=" + std::to_string(k == 5 ? 3 : 256),
        [k](auto& a, auto& o) { ref::topk_ref(a, o, {.k = k}); });
  }
}

// The KV-cache stream: top-k over the cached tokens; each decode step equals the causal
// forward's row (a window's ring and the logit masks: tests/property/streaming_test.cpp).
TEST(Topk, StreamingMatchesCausal) {
  check_streaming_matches_causal("topk", "k=7", 1e-6);
  check_streaming_matches_causal("topk", "k=200", 1e-6);  // k >= every length: softmax
}

TEST(Topk, KAtLeastKeysEqualsSoftmax) {
  Context ctx(2);
  for (bool causal : {false, true}) {
    Problem p({1, 200, 200, 2, 1, 32, 32}, 4), r = p;
    make_mechanism("topk", {.causal = causal}, "k=200")->forward(p.args32(), ctx);
    make_mechanism("softmax", {.causal = causal})->forward(r.args32(), ctx);
    for (size_t i = 0; i < p.out.f32.size(); ++i) ASSERT_NEAR(p.out.f32[i], r.out.f32[i], 2e-6f);
  }
}

TEST(TopkFeedForward, MatchesReferenceAndDenseReluAtFullK) {
  Context ctx(2);
  const int64_t T = 37, Dm = 24, F = 300, Dout = 20;
  std::mt19937 rng(8);
  std::normal_distribution<float> n;
  Tensor<float> x({T, Dm}), keys({F, Dm}), values({F, Dout}), out({T, Dout});
  for (auto* t : {&x, &keys, &values})
    for (float& e : t->vec()) e = n(rng);
  Tensor<double> x64({T, Dm}), k64({F, Dm}), v64({F, Dout}), o64({T, Dout});
  for (size_t i = 0; i < x.size(); ++i) x64[i] = x[i];
  for (size_t i = 0; i < keys.size(); ++i) k64[i] = keys[i];
  for (size_t i = 0; i < values.size(); ++i) v64[i] = values[i];
  for (int k : {1, 16, 300, 5000}) {
    topk_feed_forward(x.cview(), keys.cview(), values.cview(), out.view(), k, ctx);
    ref::topk_ff_ref(x64.cview(), k64.cview(), v64.cview(), o64.view(), k);
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], o64[i], 2e-4) << "k=" << k;
  }
  // Bad shapes are errors.
  try {
    topk_feed_forward(x.cview(), values.cview(), values.cview(), out.view(), 4, ctx);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "keys: dim 1 (20) must equal x dim 1 (24)");
  }
}

TEST(Topk, BackwardKernelMatchesReference) {
  uint32_t seed = 700;
  for (bool causal : {false, true}) {
    for (const char* config : {"k=5", "k=1,query_chunk=7", "k=64", "k=1000"}) {
      for (const Dims& d : backward_dims()) {
        Problem p(d, seed++, Layout::kHeadMajorPadded);
        p.key_lengths = std::vector<int32_t>(d.B, static_cast<int32_t>(d.Sk - 3));
        expect_kernel_gradients(*make_mechanism("topk", {.causal = causal}, config), p, seed++);
      }
    }
  }
}

}  // namespace
}  // namespace attnkit::testing
