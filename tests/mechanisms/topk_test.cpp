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

// Up to 8 rows run the decode kernel (each row scored from the key rows, no packing), under
// every mask: the reference's result, for k below and above the key count.
TEST(Topk, DecodeShapedCallsMatchTheReference) {
  Context ctx(2);
  uint32_t seed = 200;
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  const std::vector<double> slopes64(slopes.begin(), slopes.end());
  for (int64_t sq : {1, 3, 8})
    for (int64_t sk : {1, 7, 300, 3000})
      for (bool causal : {false, true})
        for (int k : {1, 5, 64})
          for (bool masked : {false, true}) {
            const Dims d{2, sq, sk, 4, 2, 24, 16};
            SCOPED_TRACE(to_string(d) + (causal ? " causal" : "") + " k=" + std::to_string(k) +
                         (masked ? " masked" : ""));
            Problem p(d, seed++, Layout::kHeadMajorPadded), r = p;
            const std::vector<int32_t> begin{0, static_cast<int32_t>(sk / 4)};
            if (masked) {
              p.key_lengths =
                  r.key_lengths = {static_cast<int32_t>(sk - sk / 3), static_cast<int32_t>(sk)};
            }
            const AttentionOptions o{.causal = causal};
            AttentionArgs a = p.args32(), a64 = r.args64();
            if (masked) {
              a.mask.key_begin = a64.mask.key_begin = begin;
              a.mask.window_left = a64.mask.window_left = sk / 2;
              a.mask.softcap = a64.mask.softcap = 2.0;
              a.mask.alibi_slopes = make_view(slopes.data(), {4});
              a64.mask.alibi_slopes = make_view(slopes64.data(), {4});
            }
            make_mechanism("topk", o, "k=" + std::to_string(k))->forward(a, ctx);
            ref::topk_ref(a64, o, {.k = k});
            const Report rep = compare(p.out, true, r.out);
            // c = 256, not 64: ALiBi over 3000 keys puts float32 logits near -1500, where
            // their spacing is 1.2e-4 (the tiled kernel rounds them alike).
            EXPECT_LE(rep.max_abs, allowed(Budget{.c = 256}, 0.0, rep.ref_max)) << rep.str();
          }
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
