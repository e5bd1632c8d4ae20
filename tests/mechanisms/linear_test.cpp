// linear: the chunked fast kernel against the float64 reference for every feature map,
// normaliser, gate and chunk length; streaming (recurrent) against causal (chunked).
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
      const LinearConfig c{.feature_map = static_cast<FeatureMap>(m),
                           .norm = static_cast<LinearNorm>(n)};
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
      ref::linear_ref(
          a64, {.causal = causal},
          {.feature_map = FeatureMap::kEluPlusOne, .norm = LinearNorm::kKernel, .gated = true});
      const Report rep = compare(p.out, true, r.out);
      EXPECT_LE(rep.max_abs, 1e-5) << "chunk=" << chunk << (causal ? " causal " : " ") << rep.str();
    }
  }
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

}  // namespace
}  // namespace attnkit::testing
