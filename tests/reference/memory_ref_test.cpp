// memory_ref: chunk recurrence against softmax closed forms; the filter's identities.
#include <cmath>

#include "src/reference/reference.hpp"
#include "tests/testing/gradients.hpp"
#include "tests/testing/harness.hpp"
#include "tests/testing/small.hpp"

namespace attnkit::testing {
namespace {

// Keys/values [memory ; tokens] for a one-chunk check with softmax_ref.
Problem concat_memory(const Problem& p) {
  const int64_t m = p.memory.shape[1], n = p.d.Sk, D = p.d.Dk;
  Dims d = p.d;
  d.Sk = m + n;
  Problem c(d, 0);
  c.q = p.q;
  for (int64_t j = 0; j < m + n; ++j)
    for (int64_t x = 0; x < D; ++x) {
      c.k.f64[j * D + x] = j < m ? p.memory.f64[j * D + x] : p.k.f64[(j - m) * D + x];
      c.v.f64[j * D + x] = j < m ? p.memory.f64[j * D + x] : p.v.f64[(j - m) * D + x];
    }
  return c;
}

TEST(MemoryRef, OneChunkIsSoftmaxOverMemoryAndTokens) {
  Problem p({1, 6, 6, 1, 1, 4, 4}, 61, Layout::kContiguous, 3);
  ref::memory_ref(p.args64(), AttentionOptions{}, {.chunk = 6});
  Problem c = concat_memory(p);
  ref::softmax_ref(c.args64(), AttentionOptions{});
  EXPECT_LE(compare(p.out, false, c.out).max_abs, 1e-14);
}

TEST(MemoryRef, MemoryWriteIsSoftmaxOfMemoryQueries) {
  // One chunk, no filter, temperature sqrt(D): M' = softmax(M [M; K]^T / sqrt(D)) [M; V].
  Problem p({1, 5, 5, 1, 1, 4, 4}, 62, Layout::kContiguous, 2);
  ref::memory_ref(p.args64(), AttentionOptions{}, {.chunk = 5});
  Problem c = concat_memory(p);
  Dims d = c.d;
  d.Sq = 2;
  Problem w(d, 0);
  w.q = p.memory;
  w.k = c.k, w.v = c.v;
  ref::softmax_ref(w.args64(), AttentionOptions{});
  EXPECT_LE(compare(p.memory_out, false, w.out).max_abs, 1e-14);
}

TEST(MemoryRef, ChunksOfOneAreCausalAlready) {
  Problem p({1, 7, 7, 1, 1, 4, 4}, 63, Layout::kContiguous, 2), q = p;
  ref::memory_ref(p.args64(), AttentionOptions{}, {.chunk = 1});
  ref::memory_ref(q.args64(), {.causal = true}, {.chunk = 1});
  EXPECT_EQ(compare(p.out, false, q.out).max_abs, 0.0);
}

TEST(MemoryRef, IdentityFiltersChangeNothing) {
  Problem base({1, 9, 9, 1, 1, 4, 4}, 64, Layout::kContiguous, 2);
  Problem plain = base, centred = base, pool = base;
  ref::memory_ref(plain.args64(), AttentionOptions{}, {.chunk = 4});
  Tensor<double> w({1, 3});
  w[1] = 1.0;  // [0, 1, 0]: the centred tap only
  AttentionArgs a = centred.args64();
  a.filter = w.cview();
  ref::memory_ref(a, AttentionOptions{}, {.chunk = 4, .width = 3});
  ref::memory_ref(pool.args64(), {},
                  {.chunk = 4, .width = 1, .filter_type = MemoryFilter::kMaxPool});
  EXPECT_LE(compare(plain.out, false, centred.out).max_abs, 1e-15);
  EXPECT_LE(compare(plain.memory_out, false, centred.memory_out).max_abs, 1e-15);
  EXPECT_EQ(compare(plain.memory_out, false, pool.memory_out).max_abs, 0.0);
}

TEST(MemoryRef, BoxFilterAndMaxPoolHandCase) {
  // One token chunk pair, D = 1, memory row 0: logits all 0 so M' = mean of [M; F(V)].
  Small s({{0.0}, {0.0}}, {{0.0}, {0.0}}, {{2.0}, {4.0}});
  s.set_memory({{0.0}});
  ref::memory_ref(s.args(), AttentionOptions{}, {.chunk = 2, .width = 2});
  // Box filter of width 2, left pad 0: F(V) = [(2 + 4) / 2, 4 / 2] = [3, 2]; mean(0, 3, 2).
  EXPECT_NEAR(s.memory_out[0], 5.0 / 3.0, 1e-15);
  ref::memory_ref(s.args(), AttentionOptions{}, {.chunk = 2, .width = 2, .filter_type = MemoryFilter::kMaxPool});
  EXPECT_NEAR(s.memory_out[0], (0.0 + 4.0 + 4.0) / 3.0, 1e-15);
}

TEST(MemoryRef, EmptyChunksLeaveMemoryUnchanged) {
  Problem p({1, 8, 8, 1, 1, 4, 4}, 65, Layout::kContiguous, 2), q = p;
  p.key_lengths = {4};
  ref::memory_ref(p.args64(), AttentionOptions{}, {.chunk = 4});
  Problem first = q;
  first.d.Sq = first.d.Sk = 4;
  for (Operand* o : {&first.q, &first.k, &first.v, &first.out}) o->shape[1] = 4;
  ref::memory_ref(first.args64(), AttentionOptions{}, {.chunk = 4});
  EXPECT_EQ(compare(p.memory_out, false, first.memory_out).max_abs, 0.0);
}

TEST(MemoryRef, BackwardEqualsCentralFiniteDifferencesIncludingMemory) {
  // Conv filter weights [Hk, width] in both precisions (the hook adds the matching view).
  std::vector<double> w64 = {0.5, -0.25, 0.75};
  uint32_t seed = 95;
  for (bool causal : {false, true}) {
    for (const char* config :
         {"chunk=2", "chunk=3,width=3", "chunk=4,width=2,filter_type=maxpool", "chunk=100"}) {
      const bool weights = std::string(config) == "chunk=3,width=3";
      Problem p({1, 7, 7, 2, 1, 3, 3}, seed++, Layout::kContiguous, /*memory_len=*/2);
      p.key_lengths = {6};
      expect_fd_gradients(*make_mechanism("memory", {.causal = causal}, config), p, seed++, 1e-6,
                          [&](AttentionArgs& a) {
                            if (weights) a.filter = make_view(w64.data(), {1, 3});
                          });
    }
  }
}

TEST(MemoryRef, FilterGradientEqualsCentralFiniteDifferences) {
  for (bool causal : {false, true}) {
    Problem p({2, 7, 7, 2, 2, 3, 3}, 97, Layout::kContiguous, /*memory_len=*/2);
    p.key_lengths = {7, 5};
    std::vector<double> w = {0.5, -0.25, 0.75, 0.1, 0.2, -0.3}, dw(6);
    const auto m = make_mechanism("memory", {.causal = causal}, "chunk=3,width=3");
    Context ctx(1);
    Grads g(p, 98);
    auto args = [&](AttentionArgs a) {
      a.filter = make_view(w.data(), {2, 3});
      return a;
    };
    auto loss = [&] {
      m->forward(args(p.args64()), ctx);
      double l = 0;
      for (size_t i = 0; i < g.dout.f64.size(); ++i) l += g.dout.f64[i] * p.out.f64[i];
      return l;
    };
    m->forward(args(p.args64()), ctx);
    BackwardArgs b = g.args64(p);
    b.forward = args(b.forward);
    b.dfilter = make_view(dw.data(), {2, 3});
    m->backward(b, ctx);
    expect_matches_fd(w, dw, loss, 1e-6, "dfilter");
  }
}

}  // namespace
}  // namespace attnkit::testing
