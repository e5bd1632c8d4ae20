// softmax_ref against closed forms.
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/harness.hpp"
#include "tests/testing/small.hpp"

namespace attnkit::testing {
namespace {

TEST(SoftmaxRef, SingleKeyReturnsItsValue) {
  Small s({{0.3, -1.0}, {2.0, 5.0}}, {{1.0, 2.0}}, {{4.0, -7.0, 0.5}});
  std::vector<double> lse(2);
  AttentionArgs a = s.args();
  a.lse = make_view(lse.data(), {1, 1, 2});
  ref::softmax_ref(a, {.scale = 0.5});
  for (int i = 0; i < 2; ++i) {
    EXPECT_DOUBLE_EQ(s.o(i, 0), 4.0);
    EXPECT_DOUBLE_EQ(s.o(i, 1), -7.0);
  }
  EXPECT_DOUBLE_EQ(lse[0], 0.5 * (0.3 - 2.0));
  EXPECT_DOUBLE_EQ(lse[1], 0.5 * (2.0 + 10.0));
}

TEST(SoftmaxRef, IdenticalKeysAverageValues) {
  Small s({{1.0, 2.0}}, {{0.5, 0.5}, {0.5, 0.5}, {0.5, 0.5}}, {{1.0}, {2.0}, {6.0}});
  std::vector<double> lse(1);
  AttentionArgs a = s.args();
  a.lse = make_view(lse.data(), {1, 1, 1});
  ref::softmax_ref(a, AttentionOptions{});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 3.0);
  EXPECT_NEAR(lse[0], 1.5 / std::sqrt(2.0) + std::log(3.0), 1e-15);
}

TEST(SoftmaxRef, HandComputedTwoKeys) {
  Small s({{1.0, 0.0}}, {{1.0, 0.0}, {0.0, 1.0}}, {{1.0, 2.0}, {3.0, 4.0}});
  ref::softmax_ref(s.args(), {.scale = 1.0});
  const double e = std::exp(1.0);
  EXPECT_NEAR(s.o(0, 0), (e + 3.0) / (e + 1.0), 1e-15);
  EXPECT_NEAR(s.o(0, 1), (2.0 * e + 4.0) / (e + 1.0), 1e-15);
}

TEST(SoftmaxRef, CausalAndPaddingMasks) {
  Small s({{1.0}, {1.0}, {1.0}}, {{0.0}, {0.0}, {0.0}}, {{1.0}, {2.0}, {6.0}});
  ref::softmax_ref(s.args(), {.causal = true});
  EXPECT_DOUBLE_EQ(s.o(0, 0), 1.0);
  EXPECT_DOUBLE_EQ(s.o(1, 0), 1.5);
  EXPECT_DOUBLE_EQ(s.o(2, 0), 3.0);
  const int32_t len[] = {2};
  AttentionArgs a = s.args();
  a.key_lengths = len;
  ref::softmax_ref(a, AttentionOptions{});
  EXPECT_DOUBLE_EQ(s.o(2, 0), 1.5);
  // Causal with Sq < Sk is bottom-right aligned: the single query sees every key.
  Small t({{1.0}}, {{0.0}, {0.0}, {0.0}}, {{1.0}, {2.0}, {6.0}});
  ref::softmax_ref(t.args(), {.causal = true});
  EXPECT_DOUBLE_EQ(t.o(0, 0), 3.0);
}

TEST(SoftmaxRef, GqaSharesKvHeads) {
  // Two query heads over one kv head equal two separate single-head calls.
  Tensor<double> q({1, 2, 2, 1}), k({1, 2, 1, 1}), v({1, 2, 1, 1}), out({1, 2, 2, 1});
  const double qs[] = {1.0, -1.0, 0.5, 2.0};
  for (int i = 0; i < 4; ++i) q[i] = qs[i];
  k[0] = 1.0, k[1] = -0.5, v[0] = 3.0, v[1] = -1.0;
  ref::softmax_ref({.q = q.cview(), .k = k.cview(), .v = v.cview(), .out = out.view()},
                   {.scale = 1.0});
  for (int i = 0; i < 2; ++i)
    for (int h = 0; h < 2; ++h) {
      const double x = qs[i * 2 + h];
      const double w0 = std::exp(x * 1.0), w1 = std::exp(x * -0.5);
      EXPECT_NEAR(out[i * 2 + h], (3.0 * w0 - w1) / (w0 + w1), 1e-15);
    }
}

}  // namespace
}  // namespace attnkit::testing

namespace attnkit::testing {
namespace {

// L = sum(dout * softmax_ref(q, k, v)); its gradient is what softmax_backward_ref returns.
double loss(Problem& p, const std::vector<double>& dout, const AttentionOptions& o) {
  ref::softmax_ref(p.args64(), o);
  double l = 0;
  for (size_t i = 0; i < dout.size(); ++i) l += dout[i] * p.out.f64[i];
  return l;
}

TEST(SoftmaxRef, BackwardEqualsCentralFiniteDifferences) {
  for (bool causal : {false, true}) {
    const Dims d{2, 3, 5, 2, 1, 3, 4};
    Problem p(d, 71);
    p.key_lengths = {5, 3};
    std::mt19937 rng(72);
    std::normal_distribution<double> n;
    std::vector<double> dout(p.out.f64.size());
    for (double& x : dout) x = n(rng);
    const AttentionOptions o{.causal = causal};
    Operand dq = make_zero_operand(p.q.shape, Layout::kContiguous);
    Operand dk = make_zero_operand(p.k.shape, Layout::kContiguous);
    Operand dv = make_zero_operand(p.v.shape, Layout::kContiguous);
    Operand dO = make_zero_operand(p.out.shape, Layout::kContiguous);
    dO.f64 = dout;
    BackwardArgs g{.forward = p.args64(), .dout = dO.view64(), .dq = dq.mut64(), .dk = dk.mut64(), .dv = dv.mut64()};
    ref::softmax_backward_ref(g, o);
    for (auto [x, grad] : {std::pair{&p.q, &dq}, {&p.k, &dk}, {&p.v, &dv}}) {
      for (size_t i = 0; i < x->f64.size(); ++i) {
        const double keep = x->f64[i], h = 1e-6;
        x->f64[i] = keep + h;
        const double up = loss(p, dout, o);
        x->f64[i] = keep - h;
        const double down = loss(p, dout, o);
        x->f64[i] = keep;
        EXPECT_NEAR(grad->f64[i], (up - down) / (2 * h), 1e-7) << "element " << i << (causal ? " causal" : "");
      }
    }
  }
}

}  // namespace
}  // namespace attnkit::testing
