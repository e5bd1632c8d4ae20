// rfa_ref and random_features against closed forms and Monte-Carlo convergence.
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/gradients.hpp"
#include "tests/testing/harness.hpp"
#include "tests/testing/small.hpp"

namespace attnkit::testing {
namespace {

TEST(RandomFeatures, OrthogonalBlocksAndGaussianMarginals) {
  const int S = 32, D = 16;
  const std::vector<double> w = random_features(7, 1, S, D, true);
  for (int r = 0; r < S; ++r)
    for (int p = r - r % D; p < r; ++p) {  // rows of one block are orthogonal
      double dot = 0;
      for (int i = 0; i < D; ++i) dot += w[r * D + i] * w[p * D + i];
      EXPECT_NEAR(dot, 0.0, 1e-9);
    }
  const std::vector<double> g = random_features(7, 4, 256, 16, false);
  double mean = 0, var = 0;
  for (double x : g) mean += x / g.size();
  for (double x : g) var += (x - mean) * (x - mean) / g.size();
  EXPECT_NEAR(mean, 0.0, 0.03);
  EXPECT_NEAR(var, 1.0, 0.05);
  EXPECT_EQ(random_features(7, 1, S, D, true), w);  // reproducible from the seed
}

TEST(RfaRef, SingleAndIdenticalKeysAreExact) {
  Small s({{0.3, -0.2}}, {{0.5, 0.1}}, {{2.0, -1.0}});
  ref::rfa_ref(s.args(), AttentionOptions{}, {.features = 8});
  EXPECT_NEAR(s.o(0, 0), 2.0, 1e-14);
  Small t({{0.3, -0.2}}, {{0.5, 0.1}, {0.5, 0.1}}, {{2.0}, {4.0}});
  ref::rfa_ref(t.args(), AttentionOptions{}, {.features = 8});
  EXPECT_NEAR(t.o(0, 0), 3.0, 1e-14);
}

double mean_error(int features, bool orthogonal) {
  double err = 0;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    Problem p({1, 16, 16, 1, 1, 8, 8}, 11), exact = p;
    for (double& x : p.q.f64) x *= 0.5;
    for (double& x : p.k.f64) x *= 0.5;
    exact.q = p.q, exact.k = p.k;
    ref::rfa_ref(p.args64(), AttentionOptions{}, {.features = features, .orthogonal = orthogonal, .seed = seed});
    ref::softmax_ref(exact.args64(), AttentionOptions{});
    err += compare(p.out, false, exact.out).max_abs / 4;
  }
  return err;
}

TEST(RfaRef, ConvergesToSoftmaxAsFeaturesGrow) {
  for (bool orth : {false, true}) {
    const double coarse = mean_error(16, orth), fine = mean_error(4096, orth);
    EXPECT_LT(fine, 0.05) << "orthogonal=" << orth;
    EXPECT_LT(fine, coarse / 4) << "orthogonal=" << orth << " coarse=" << coarse;
  }
}

TEST(RfaRef, BackwardEqualsCentralFiniteDifferences) {
  uint32_t seed = 60;
  for (const char* name : {"rfa", "performer"}) {
    for (bool causal : {false, true}) {
      for (const Dims& d : {Dims{1, 4, 4, 2, 1, 3, 2}, Dims{2, 3, 5, 1, 1, 2, 3}}) {
        Problem p(d, seed++);
        p.key_lengths = std::vector<int32_t>(d.B, static_cast<int32_t>(d.Sk - 1));
        expect_fd_gradients(*make_mechanism(name, {.causal = causal}, "features=5"), p, seed++);
      }
    }
  }
}

}  // namespace
}  // namespace attnkit::testing
