// linear_ref against closed forms (SPEC 1 "Tests to write").
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/gradients.hpp"
#include "tests/testing/harness.hpp"
#include "tests/testing/small.hpp"

namespace attnkit::testing {
namespace {

Small two_tokens() {
  return Small({{1.0, 2.0}}, {{1.0, 0.0}, {0.0, 1.0}}, {{1.0, 1.0}, {2.0, 3.0}});
}

TEST(LinearRef, CqEqualsSumOfScoredValues) {
  // r = sum_t (k_t . q) v_t = 1 * [1, 1] + 2 * [2, 3].
  Small s = two_tokens();
  ref::linear_ref(s.args(), AttentionOptions{}, {});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 5.0);
  EXPECT_DOUBLE_EQ(s.o(0, 1), 7.0);
}

TEST(LinearRef, Normalisers) {
  Small s = two_tokens();
  ref::linear_ref(s.args(), AttentionOptions{}, {.norm = LinearNorm::kLength});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 2.5);
  ref::linear_ref(s.args(), AttentionOptions{}, {.norm = LinearNorm::kFixed1000});
  EXPECT_DOUBLE_EQ(s.o(0, 1), 3500.0);
  ref::linear_ref(s.args(), AttentionOptions{}, {.map = FeatureMap::kRelu, .norm = LinearNorm::kKernel});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 5.0 / 3.0);  // z = q . (k_0 + k_1) = 3
  EXPECT_DOUBLE_EQ(s.o(0, 1), 7.0 / 3.0);
}

TEST(LinearRef, FeatureMaps) {
  Small s({{-1.0}}, {{1.0}}, {{1.0}});
  ref::linear_ref(s.args(), AttentionOptions{}, {.map = FeatureMap::kEluPlusOne});
  EXPECT_DOUBLE_EQ(s.o(0, 0), std::exp(-1.0) * 2.0);
  ref::linear_ref(s.args(), AttentionOptions{}, {.map = FeatureMap::kRelu});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 0.0);
  ref::linear_ref(s.args(), AttentionOptions{}, {.map = FeatureMap::kExp});
  EXPECT_DOUBLE_EQ(s.o(0, 0), std::exp(-1.0) * std::exp(1.0));
}

TEST(LinearRef, GateOfOneScalesBySigmoidSquared) {
  Small s = two_tokens();
  Tensor<double> gate({1, 2, 1});
  gate[0] = gate[1] = 1.0;
  AttentionArgs a = s.args();
  a.gate = gate.cview();
  ref::linear_ref(a, AttentionOptions{}, {.gated = true});
  const double u = 1.0 / (1.0 + std::exp(-1.0));
  EXPECT_NEAR(s.o(0, 0), u * u * 5.0, 1e-14);
  EXPECT_NEAR(s.o(0, 1), u * u * 7.0, 1e-14);
}

TEST(LinearRef, CausalRowsArePrefixesAndPaddingIsIgnored) {
  Small s({{1.0, 2.0}, {1.0, 2.0}}, {{1.0, 0.0}, {0.0, 1.0}}, {{1.0, 1.0}, {2.0, 3.0}});
  ref::linear_ref(s.args(), {.causal = true}, {});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 1.0);  // only token 0
  EXPECT_DOUBLE_EQ(s.o(1, 0), 5.0);
  const int32_t len[] = {1};
  AttentionArgs a = s.args();
  a.key_lengths = len;
  ref::linear_ref(a, AttentionOptions{}, {});
  EXPECT_DOUBLE_EQ(s.o(1, 1), 1.0);
}

}  // namespace
}  // namespace attnkit::testing

namespace attnkit::testing {
namespace {

TEST(LinearRef, BackwardEqualsCentralFiniteDifferences) {
  for (int map = 0; map < 4; ++map)
    for (int norm = 0; norm < 4; ++norm)
      for (bool gated : {false, true})
        for (bool causal : {false, true}) {
          if (map == 0 && norm == 3) continue;  // identity + kernel is rejected
          const LinearConfig c{.map = static_cast<FeatureMap>(map),
                               .norm = static_cast<LinearNorm>(norm),
                               .gated = gated};
          const AttentionOptions o{.causal = causal};
          const Dims d{1, 3, 4, 2, 1, 3, 2};
          Problem p(d, static_cast<uint32_t>(80 + map * 16 + norm * 4 + gated * 2 + causal));
          p.key_lengths = {3};
          Tensor<double> gate({1, 4, 1}), dgate({1, 4, 1});
          std::mt19937 rng(81);
          std::normal_distribution<double> nd;
          for (double& x : gate.vec()) x = nd(rng);
          std::vector<double> dout(p.out.f64.size());
          for (double& x : dout) x = nd(rng);
          auto loss = [&] {
            AttentionArgs a = p.args64();
            if (gated) a.gate = gate.cview();
            ref::linear_ref(a, o, c);
            double l = 0;
            for (size_t i = 0; i < dout.size(); ++i) l += dout[i] * p.out.f64[i];
            return l;
          };
          Operand dq = make_zero_operand(p.q.shape, Layout::kContiguous);
          Operand dk = make_zero_operand(p.k.shape, Layout::kContiguous);
          Operand dv = make_zero_operand(p.v.shape, Layout::kContiguous);
          Operand dO = make_zero_operand(p.out.shape, Layout::kContiguous);
          dO.f64 = dout;
          BackwardArgs g{.forward = p.args64(),
                         .dout = dO.view64(),
                         .dq = dq.mut64(),
                         .dk = dk.mut64(),
                         .dv = dv.mut64()};
          if (gated) g.forward.gate = gate.cview();
          ref::linear_backward_ref(g, o, c, dgate.view());
          const std::string where =
              " map=" + std::to_string(map) + " norm=" + std::to_string(norm) +
              " gated=" + std::to_string(gated) + " causal=" + std::to_string(causal);
          auto check = [&](std::vector<double>& x, const std::vector<double>& grad,
                           const char* what) {
            expect_matches_fd(x, grad, loss, 1e-6, what + where);
          };
          check(p.q.f64, dq.f64, "dq");
          check(p.k.f64, dk.f64, "dk");
          check(p.v.f64, dv.f64, "dv");
          if (gated) check(gate.vec(), dgate.vec(), "dgate");
        }
}

}  // namespace
}  // namespace attnkit::testing
