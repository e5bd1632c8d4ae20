// Exact softmax attention: the fused online-softmax kernel against an unfused
// OpenBLAS peer (S = QK^T, row softmax, O = PV per head, as naive PyTorch does).
// Counters: GFLOP (shown as a rate, i.e. GFLOP/s) over 4*D*(visible pairs) per head; bytes of extra
// memory.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cmath>
#include <random>

#include "attnkit/attnkit.hpp"

namespace attnkit {
namespace {

constexpr int64_t kHeads = 8, kDim = 64;

struct Inputs {
  Tensor<float> q, k, v, out;
  explicit Inputs(int64_t n)
      : q({1, n, kHeads, kDim}),
        k({1, n, kHeads, kDim}),
        v({1, n, kHeads, kDim}),
        out({1, n, kHeads, kDim}) {
    std::mt19937 rng(1);
    std::normal_distribution<float> d;
    for (auto* t : {&q, &k, &v})
      for (float& x : t->vec()) x = d(rng);
  }
  AttentionArgs args() {
    return {.q = q.cview(), .k = k.cview(), .v = v.cview(), .out = out.view()};
  }
};

double flops(int64_t n, bool causal) {
  const double pairs = causal ? n * (n + 1) / 2.0 : static_cast<double>(n) * n;
  return 4.0 * kDim * pairs * kHeads;
}

void BM_SoftmaxFused(benchmark::State& state) {
  const int64_t n = state.range(0);
  const bool causal = state.range(1) != 0;
  Inputs in(n);
  Context ctx(0);
  const auto m = make_mechanism("softmax", {.causal = causal});
  const AttentionArgs a = in.args();
  for (auto _ : state) m->forward(a, ctx);
  state.counters["GFLOP"] =
      benchmark::Counter(flops(n, causal) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["workspace_MiB"] = static_cast<double>(ctx.workspace_bytes()) / (1 << 20);
}

// Unfused peer: materialises the [n, n] score matrix per head (O(n^2) memory).
void BM_SoftmaxUnfusedBlas(benchmark::State& state) {
  const int64_t n = state.range(0);
  const bool causal = state.range(1) != 0;
  Inputs in(n);
  std::vector<float> s(n * n);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  const int ld = static_cast<int>(kHeads * kDim);
  for (auto _ : state) {
    for (int64_t h = 0; h < kHeads; ++h) {
      const float* q = in.q.data() + h * kDim;
      const float* k = in.k.data() + h * kDim;
      const float* v = in.v.data() + h * kDim;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, kDim, scale, q, ld, k, ld, 0.0f,
                  s.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        float* row = s.data() + i * n;
        const int64_t vis = causal ? i + 1 : n;
        float m = -INFINITY, sum = 0;
        for (int64_t j = 0; j < vis; ++j) m = std::max(m, row[j]);
        for (int64_t j = 0; j < vis; ++j) sum += (row[j] = std::exp(row[j] - m));
        for (int64_t j = 0; j < vis; ++j) row[j] /= sum;
        for (int64_t j = vis; j < n; ++j) row[j] = 0.0f;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, kDim, n, 1.0f, s.data(), n, v, ld,
                  0.0f, in.out.data() + h * kDim, ld);
    }
    benchmark::DoNotOptimize(in.out.data());
  }
  state.counters["GFLOP"] =
      benchmark::Counter(flops(n, causal) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["workspace_MiB"] = static_cast<double>(s.size() * sizeof(float)) / (1 << 20);
}

// Backward (dq, dk, dv) after a forward; FLOPs counted as 2.5x the forward's (FlashAttention's
// convention: the backward does 5 matmul-sized products against the forward's 2).
void BM_SoftmaxBackward(benchmark::State& state) {
  const int64_t n = state.range(0);
  const bool causal = state.range(1) != 0;
  Inputs in(n);
  Tensor<float> dout({1, n, kHeads, kDim}), dq({1, n, kHeads, kDim}), dk({1, n, kHeads, kDim}),
      dv({1, n, kHeads, kDim});
  for (size_t i = 0; i < dout.size(); ++i) dout[i] = 0.01f * static_cast<float>(i % 97);
  Context ctx(0);
  const auto m = make_mechanism("softmax", {.causal = causal});
  m->forward(in.args(), ctx);
  const BackwardArgs g{.forward = in.args(),
                       .dout = dout.cview(),
                       .dq = dq.view(),
                       .dk = dk.view(),
                       .dv = dv.view()};
  for (auto _ : state) m->backward(g, ctx);
  state.counters["GFLOP"] = benchmark::Counter(2.5 * flops(n, causal) * 1e-9,
                                               benchmark::Counter::kIsIterationInvariantRate);
}

// Causal sliding window (keys i - window .. i, as Mistral's): key blocks outside the window
// are skipped, so time grows as N x window. GFLOP counts the visible pairs only.
void BM_SoftmaxWindow(benchmark::State& state) {
  const int64_t n = state.range(0), window = state.range(1);
  const bool backward = state.range(2) != 0;
  Inputs in(n);
  Tensor<float> dout({1, n, kHeads, kDim}), dq({1, n, kHeads, kDim}), dk({1, n, kHeads, kDim}),
      dv({1, n, kHeads, kDim});
  Context ctx(0);
  const auto m = make_mechanism("softmax", {.causal = true});
  AttentionArgs a = in.args();
  a.mask.window_left = window;
  m->forward(a, ctx);
  const BackwardArgs g{
      .forward = a, .dout = dout.cview(), .dq = dq.view(), .dk = dk.view(), .dv = dv.view()};
  for (auto _ : state) {
    if (backward) {
      m->backward(g, ctx);
    } else {
      m->forward(a, ctx);
    }
  }
  double pairs = 0;
  for (int64_t i = 0; i < n; ++i) pairs += static_cast<double>(std::min(i, window) + 1);
  state.counters["GFLOP"] =
      benchmark::Counter((backward ? 2.5 : 1.0) * 4.0 * kDim * pairs * kHeads * 1e-9,
                         benchmark::Counter::kIsIterationInvariantRate);
}

void Shapes(benchmark::internal::Benchmark* b) {
  for (int64_t causal : {0, 1})
    for (int64_t n : {1024, 2048, 4096}) b->Args({n, causal});
  b->ArgNames({"N", "causal"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_SoftmaxFused)->Apply(Shapes);
BENCHMARK(BM_SoftmaxUnfusedBlas)->Apply(Shapes);
BENCHMARK(BM_SoftmaxBackward)->Apply(Shapes);
BENCHMARK(BM_SoftmaxWindow)
    ->ArgsProduct({{4096, 16384}, {256, 1024, 4096, 16384}, {0, 1}})
    ->ArgNames({"N", "window", "backward"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace attnkit
