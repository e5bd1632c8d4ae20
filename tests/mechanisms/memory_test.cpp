// memory: the chunked fast kernel against the float64 reference, with and without filters.
#include "src/reference/reference.hpp"
#include "tests/testing/gradients.hpp"
#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

// The fixed-size stream (memory + one chunk's buffer): each decode step equals the causal
// forward's row, across chunk boundaries, for the box conv filter and max-pool.
TEST(Memory, StreamingMatchesCausal) {
  check_streaming_matches_causal("memory", "chunk=8,width=3", 2e-6, 3);
  check_streaming_matches_causal("memory", "chunk=5,width=2,filter_type=maxpool", 2e-6, 2);
  check_streaming_matches_causal("memory", "chunk=1", 2e-6, 1);
}

TEST(Memory, MatchesReferenceOverTheSweep) {
  for (const auto& entry : std::vector<std::pair<std::string, MemoryConfig>>{
           {"chunk=16", {.chunk = 16}},
           {"chunk=7,width=3", {.chunk = 7, .width = 3}},
           {"chunk=32,width=4,filter_type=maxpool,temperature=2",
            {.chunk = 32, .width = 4, .filter_type = MemoryFilter::kMaxPool, .temperature = 2.0}},
           {"chunk=500", {.chunk = 500}}}) {
    const MemoryConfig c = entry.second;  // a variable, not a binding: the lambda captures it
    sweep_against_reference("memory", entry.first,
                            [c](auto& a, auto& o) { ref::memory_ref(a, o, c); },
                            {.memory_len = 3, .equal_lengths = true, .equal_dims = true});
  }
}

TEST(Memory, ExplicitConvWeights) {
  Context ctx(2);
  const Dims d{1, 40, 40, 2, 1, 16, 16};
  Problem p(d, 3, Layout::kContiguous, 4), r = p;
  Tensor<float> w({1, 3});
  Tensor<double> w64({1, 3});
  const float taps[3] = {0.25f, -0.5f, 1.5f};
  for (int i = 0; i < 3; ++i) w64[i] = w[i] = taps[i];
  AttentionArgs a = p.args32();
  a.filter = w.cview();
  AttentionArgs a64 = r.args64();
  a64.filter = w64.cview();
  make_mechanism("memory", {.causal = true}, "chunk=8,width=3")->forward(a, ctx);
  ref::memory_ref(a64, {.causal = true}, {.chunk = 8, .width = 3});
  for (auto [got, want] : {std::pair{&p.out, &r.out}, {&p.memory_out, &r.memory_out}}) {
    const Report rep = compare(*got, true, *want);
    EXPECT_LE(rep.max_abs, allowed(Budget{.c = 64}, 0.0, rep.ref_max)) << rep.str();
  }
}

// A stream with explicit conv weights (StreamSpec::filter, copied) decodes as the forward with
// the same filter array; filter weights for another mechanism's stream, or of the wrong
// shape, are errors.
TEST(Memory, StreamWithConvWeightsMatchesTheForward) {
  Context ctx(2);
  const Dims d{1, 30, 30, 2, 1, 8, 8};
  Problem p(d, 5, Layout::kContiguous, 3);
  Tensor<float> w({1, 3});
  const float taps[3] = {0.25f, -0.5f, 1.5f};
  for (int i = 0; i < 3; ++i) w[i] = taps[i];
  const auto m = make_mechanism("memory", {.causal = true}, "chunk=4,width=3");
  AttentionArgs a = p.args32();
  a.filter = w.cview();
  m->forward(a, ctx);
  StreamSpec spec{.batch = 1, .heads = 2, .kv_heads = 1, .head_dim = 8, .value_dim = 8};
  spec.memory = p.memory.view32();
  spec.filter = w.cview();
  auto s = m->new_stream(spec);
  w[0] = 7.0f;  // the stream holds its own copy
  std::vector<float> got(2 * 8);
  for (int64_t t = 0; t < d.Sk; ++t) {
    ConstTensorView k = p.k.view32(), v = p.v.view32(), q = p.q.view32();
    k.shape[1] = v.shape[1] = q.shape[1] = 1;
    k.data = k.row<const float>(0, t, 0), v.data = v.row<const float>(0, t, 0);
    q.data = q.row<const float>(0, t, 0);
    s->append(k, v, ctx);
    s->query(q, make_view(got.data(), {1, 1, 2, 8}), ctx);
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t x = 0; x < 8; ++x)
        ASSERT_NEAR(got[h * 8 + x], a.out.row<float>(0, t, h)[x], 2e-6) << "token " << t;
  }
  StreamSpec plain{.batch = 1, .heads = 2, .kv_heads = 1, .head_dim = 8, .value_dim = 8};
  plain.filter = w.cview();
  EXPECT_EQ(error_of([&] { make_mechanism("linear")->new_stream(plain); }),
            "filter: only a memory stream takes filter weights");
  spec.filter = w.cview();
  EXPECT_EQ(error_of([&] { make_mechanism("memory", {}, "width=2")->new_stream(spec); }),
            "filter: shape [1, 3] must be [Hk, width] = [1, 2]");
}

TEST(Memory, BackwardKernelMatchesReference) {
  std::vector<double> w64 = {0.5, -0.25, 0.75, 0.1, 0.2, 0.3};
  std::vector<float> w32(w64.begin(), w64.end());
  uint32_t seed = 900;
  for (bool causal : {false, true}) {
    for (const char* config :
         {"chunk=16", "chunk=7,width=3", "chunk=32,width=4,filter_type=maxpool", "chunk=128"}) {
      const bool weights = std::string(config) == "chunk=7,width=3";
      for (const Dims& d : {Dims{1, 70, 70, 2, 2, 32, 32}, Dims{2, 45, 45, 4, 2, 16, 16}}) {
        Problem p(d, seed++, Layout::kHeadMajorPadded, /*memory_len=*/5);
        p.key_lengths = std::vector<int32_t>(d.B, static_cast<int32_t>(d.Sk - 3));
        expect_kernel_gradients(*make_mechanism("memory", {.causal = causal}, config), p, seed++,
                                64, [&](AttentionArgs& a) {
                                  if (!weights) return;
                                  a.filter = a.q.dtype == DType::kF64
                                                 ? make_view(w64.data(), {d.Hk, 3})
                                                 : make_view(w32.data(), {d.Hk, 3});
                                });
      }
    }
  }
}

TEST(Memory, FilterGradientKernelMatchesReferenceAndThreads) {
  std::vector<double> w64 = {0.5, -0.25, 0.75, 0.1, 0.2, 0.3};
  std::vector<float> w32(w64.begin(), w64.end());
  const Dims d{2, 45, 45, 4, 2, 16, 16};
  Problem base(d, 950, Layout::kHeadMajorPadded, /*memory_len=*/5);
  base.key_lengths = {45, 40};
  const auto m = make_mechanism("memory", {.causal = true}, "chunk=7,width=3");
  std::vector<double> dw64(6);
  {
    Context ctx(1);
    Problem r = base;
    Grads g(r, 951);
    AttentionArgs a = r.args64();
    a.filter = make_view(w64.data(), {2, 3});
    m->forward(a, ctx);
    BackwardArgs b = g.args64(r);
    b.forward.filter = a.filter;
    b.dfilter = make_view(dw64.data(), {2, 3});
    m->backward(b, ctx);
  }
  std::vector<float> first;
  for (int threads : {1, 2, 7}) {
    Context ctx(threads);
    Problem p = base;
    Grads g(p, 951);
    std::vector<float> dw(6);
    AttentionArgs a = p.args32();
    a.filter = make_view(w32.data(), {2, 3});
    m->forward(a, ctx);
    BackwardArgs b = g.args32(p);
    b.forward.filter = a.filter;
    b.dfilter = make_view(dw.data(), {2, 3});
    m->backward(b, ctx);
    double worst = 0, scale = 1;
    for (size_t i = 0; i < dw.size(); ++i) {
      worst = std::max(worst, std::abs(dw[i] - dw64[i]));
      scale = std::max(scale, std::abs(dw64[i]));
    }
    EXPECT_LE(worst, allowed(Budget{.c = 256}, 0.0, scale)) << threads << " threads";
    if (first.empty()) first = dw;
    EXPECT_EQ(dw, first) << threads << " threads";
  }
}

}  // namespace
}  // namespace attnkit::testing
