// linear: the chunked fast kernel against the float64 reference for every feature map,
// normaliser, gate and chunk length; streaming (recurrent) against causal (chunked).
#include <tuple>

#include "src/reference/reference.hpp"
#include "tests/testing/sweep.hpp"

namespace attnkit::testing {
namespace {

TEST(Linear, MatchesReferenceForEveryMapAndNorm) {
  const char* maps[] = {"identity", "elu1", "relu", "exp"};
  const char* norms[] = {"none", "length", "fixed1000", "kernel"};
  for (int m = 0; m < 4; ++m)
    for (int n = 0; n < 4; ++n) {
      if (m == 0 && n == 3) continue;  // identity + kernel is rejected
      const LinearConfig c{.map = static_cast<FeatureMap>(m), .norm = static_cast<LinearNorm>(n)};
      const std::string cfg = std::string("map=") + maps[m] + ",norm=" + norms[n] + ",chunk=16";
      // Unnormalised sums grow like N |q||k||v|: budget relative to the output scale.
      sweep_against_reference("linear", cfg, [c](auto& a, auto& o) { ref::linear_ref(a, o, c); },
                              {.c = n == 0 || n == 1 || n == 2 ? 512.0 : 64.0});
    }
}

TEST(Linear, ChunkLengthsAndGate) {
  Context ctx(2);
  for (int chunk : {1, 7, 64, 200}) {
    for (bool causal : {false, true}) {
      const Dims d{2, 130, 130, 4, 2, 24, 40};
      Problem p(d, 3 + chunk), r = p;
      Tensor<float> gate({d.B, d.Sk, d.Hk});
      Tensor<double> gate64({d.B, d.Sk, d.Hk});
      for (size_t i = 0; i < gate.size(); ++i)
        gate64[i] = gate[i] = static_cast<float>(std::sin(0.37 * i));
      AttentionArgs a = p.args32();
      a.gate = gate.cview();
      AttentionArgs a64 = r.args64();
      a64.gate = gate64.cview();
      const auto m = make_mechanism("linear", {.causal = causal},
                                    "map=elu1,norm=kernel,gated=1,chunk=" + std::to_string(chunk));
      m->forward(a, ctx);
      ref::linear_ref(a64, {.causal = causal},
                      {.map = FeatureMap::kEluPlusOne, .norm = LinearNorm::kKernel, .gated = true});
      const Report rep = compare(p.out, true, r.out);
      EXPECT_LE(rep.max_abs, allowed(Budget{.c = 64}, 0.0, rep.ref_max))
          << "chunk=" << chunk << (causal ? " causal " : " ") << rep.str();
    }
  }
}

// The gated stream: append_gated adds each token with its gate; a decode step (1 token, or 3
// appended at once) equals the causal gated forward's row. Appending without a gate, or a
// gate to an ungated stream, is an error.
TEST(Linear, GatedStreamMatchesTheCausalGatedForward) {
  Context ctx(2);
  const Dims d{2, 30, 30, 4, 2, 8, 8};
  Problem p(d, 13);
  Tensor<float> gate({d.B, d.Sk, d.Hk});
  for (size_t i = 0; i < gate.size(); ++i) gate[i] = static_cast<float>(std::sin(0.37 * i));
  const auto m = make_mechanism("linear", {.causal = true}, "map=elu1,norm=kernel,gated=1");
  AttentionArgs a = p.args32();
  a.gate = gate.cview();
  m->forward(a, ctx);
  const StreamSpec spec{
      .batch = d.B, .heads = d.Hq, .kv_heads = d.Hk, .head_dim = d.Dk, .value_dim = d.Dv};
  auto s = m->new_stream(spec);
  std::vector<float> got(d.B * d.Hq * d.Dv);
  for (int64_t t = 0; t < d.Sk;) {
    const int64_t n = std::min<int64_t>(t % 2 ? 3 : 1, d.Sk - t);  // 1 or 3 per append
    ConstTensorView k = p.k.view32(), v = p.v.view32(), q = p.q.view32(), g = gate.cview();
    k.shape[1] = v.shape[1] = g.shape[1] = n, q.shape[1] = 1;
    k.data = k.row<const float>(0, t, 0), v.data = v.row<const float>(0, t, 0);
    g.data = &g.at<const float>(0, t, 0);
    q.data = q.row<const float>(0, t + n - 1, 0);
    s->append_gated(k, v, g, ctx);
    t += n;
    s->query(q, make_view(got.data(), {d.B, 1, d.Hq, d.Dv}), ctx);
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t h = 0; h < d.Hq; ++h)
        for (int64_t x = 0; x < d.Dv; ++x)
          ASSERT_NEAR(got[(b * d.Hq + h) * d.Dv + x], a.out.row<float>(b, t - 1, h)[x], 2e-6)
              << "token " << t;
  }
  ConstTensorView k1 = p.k.view32(), v1 = p.v.view32();
  k1.shape[1] = v1.shape[1] = 1;
  EXPECT_EQ(error_of([&] { s->append(k1, v1, ctx); }),
            "gate: gated linear attention's stream needs a gate per token: append_gated(k, v, "
            "gate)");
  auto plain = make_mechanism("linear")->new_stream(spec);
  EXPECT_EQ(error_of([&] { plain->append_gated(k1, v1, gate.cview(), ctx); }),
            "gate: this stream takes no gate (only linear gated=1 does); use append(k, v)");
  EXPECT_EQ(error_of([&] { s->append_gated(k1, v1, gate.cview(), ctx); }),
            "gate: shape [2, 30, 2] must be [B, T, Hk] = [2, 1, 2]");
}

TEST(Linear, ExpMapOverflowIsAnErrorUnlessLogSpace) {
  Context ctx(1);
  Problem p({1, 4, 4, 1, 1, 8, 8}, 5);
  p.q.f32[3] = 50.0f;
  try {
    make_mechanism("linear", {}, "map=exp")->forward(p.args32(), ctx);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(
        std::string(e.what()),
        "q: entries must be <= 30 with map=exp (exp overflows float32); use norm=kernel (Heinsen's "
        "log-space form) for larger values");
  }
  make_mechanism("linear", {}, "map=exp,norm=kernel")->forward(p.args32(), ctx);
  for (float x : p.out.f32) EXPECT_TRUE(std::isfinite(x));
}

TEST(Linear, StreamingMatchesCausal) {
  check_streaming_matches_causal("linear", "map=elu1,norm=kernel", 2e-6);
  check_streaming_matches_causal("linear", "map=identity,norm=length,chunk=8", 2e-5);
}

TEST(Linear, Bf16InputsWidenToTheFloat32Result) {
  check_bf16_matches_float32(
      "linear",
      {"map=elu1,norm=kernel", "map=identity,norm=length,chunk=16", "map=exp,norm=kernel"}, 0.0f);
}

TEST(Linear, BackwardMatchesReference) {
  Context ctx(2);
  uint32_t seed = 500;
  const char* maps[] = {"identity", "elu1", "relu", "exp"};
  const char* norms[] = {"none", "length", "fixed1000", "kernel"};
  for (int mp = 0; mp < 4; ++mp)
    for (int nm = 0; nm < 4; ++nm)
      for (bool gated : {false, true})
        for (bool causal : {false, true})
          // One query block; several blocks of 7 rows with Sq < Sk and Sq > Sk (the chunked
          // backward's masked blocks, state and always-visible keys).
          for (auto [d, chunk] : {std::pair{Dims{2, 37, causal ? 50 : 29, 4, 2, 12, 20}, 64},
                                  {Dims{1, 45, 60, 2, 1, 20, 24}, 7},
                                  {Dims{1, 61, 40, 2, 2, 16, 8}, 7}}) {
            if (mp == 0 && nm == 3) continue;
            const LinearConfig c{.map = static_cast<FeatureMap>(mp),
                                 .norm = static_cast<LinearNorm>(nm),
                                 .gated = gated};
            const std::string cfg = std::string("map=") + maps[mp] + ",norm=" + norms[nm] +
                                    (gated ? ",gated=1" : "") + ",chunk=" + std::to_string(chunk);
            SCOPED_TRACE(cfg + (causal ? " causal " : " ") + to_string(d));
            Problem p(d, seed++, Layout::kHeadMajorPadded), r = p;
            p.key_lengths = r.key_lengths = std::vector<int32_t>(d.B, static_cast<int32_t>(d.Sk));
            p.key_lengths.back() = r.key_lengths.back() = static_cast<int32_t>(d.Sk - 5);
            for (Problem* x :
                 {&p, &r}) {  // keep exp features small: the float kernel is not log-space
              for (float& e : x->q.f32) e *= 0.5f;
              for (float& e : x->k.f32) e *= 0.5f;
              for (size_t i = 0; i < x->q.f64.size(); ++i) x->q.f64[i] = x->q.f32[i];
              for (size_t i = 0; i < x->k.f64.size(); ++i) x->k.f64[i] = x->k.f32[i];
            }
            Tensor<float> gate({d.B, d.Sk, d.Hk}), dgate({d.B, d.Sk, d.Hk});
            Tensor<double> gate64({d.B, d.Sk, d.Hk}), dgate64({d.B, d.Sk, d.Hk});
            for (size_t i = 0; i < gate.size(); ++i)
              gate64[i] = gate[i] = static_cast<float>(std::cos(0.7 * i));
            Grads g(p, seed++), gr = g;
            BackwardArgs a = g.args32(p), a64 = gr.args64(r);
            if (gated) {
              a.forward.gate = gate.cview();
              a.dgate = dgate.view();
              a64.forward.gate = gate64.cview();
            }
            make_mechanism("linear", {.causal = causal}, cfg)->backward(a, ctx);
            ref::linear_backward_ref(a64, {.causal = causal}, c, dgate64.view());
            for (auto [got, want, name] :
                 {std::tuple{&g.dq, &gr.dq, "dq"}, {&g.dk, &gr.dk, "dk"}, {&g.dv, &gr.dv, "dv"}}) {
              const Report rep = compare(*got, true, *want);
              EXPECT_LE(rep.max_abs, allowed(Budget{.c = 256}, 0.0, rep.ref_max))
                  << name << " " << rep.str();
            }
            if (gated) {
              double worst = 0, scale = 1;
              for (size_t i = 0; i < dgate.size(); ++i) {
                worst = std::max(worst, std::abs(dgate[i] - dgate64[i]));
                scale = std::max(scale, std::abs(dgate64[i]));
              }
              EXPECT_LE(worst, allowed(Budget{.c = 256}, 0.0, scale)) << "dgate";
            }
          }
}

TEST(Linear, BackwardBitwiseAcrossThreads) {
  Problem base({2, 80, 80, 4, 2, 16, 16}, 77);
  std::vector<float> first;
  for (int threads : {1, 2, 7}) {
    Context ctx(threads);
    Problem p = base;
    Grads g(p, 78);
    make_mechanism("linear", {.causal = true}, "map=elu1,norm=kernel")->backward(g.args32(p), ctx);
    const std::vector<float> all = g.all32();
    if (first.empty()) first = all;
    EXPECT_EQ(all, first) << threads << " threads";
  }
}

}  // namespace
}  // namespace attnkit::testing
