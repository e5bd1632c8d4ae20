// Every registered mechanism's forward pass, and backward pass where it has one, on the same
// shapes (B=1, H=8, D=64), causal where it has a causal form, with exact softmax in the same
// run for ratios.
#include <benchmark/benchmark.h>

#include <random>

#include "attnkit/attnkit.hpp"

namespace attnkit {
namespace {

constexpr int64_t kHeads = 8, kDim = 64, kMemory = 16;

void BM_Mechanism(benchmark::State& state, const std::string& name, bool causal) {
  const int64_t n = state.range(0);
  Tensor<float> q({1, n, kHeads, kDim}), k({1, n, kHeads, kDim}), v({1, n, kHeads, kDim});
  Tensor<float> out({1, n, kHeads, kDim}), mem({1, kMemory, kHeads, kDim}),
      mem_out({1, kMemory, kHeads, kDim});
  std::mt19937 rng(1);
  std::normal_distribution<float> d;
  for (auto* t : {&q, &k, &v, &mem})
    for (float& x : t->vec()) x = d(rng);
  const auto m = make_mechanism(name, {.causal = causal});
  AttentionArgs a{.q = q.cview(), .k = k.cview(), .v = v.cview(), .out = out.view()};
  if (m->capabilities().needs_memory) {
    a.memory = mem.cview();
    a.memory_out = mem_out.view();
  }
  Context ctx(0);
  for (auto _ : state) m->forward(a, ctx);
  state.counters["tokens"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}

// Backward of the mechanisms that have one (dq, dk, dv, and dmemory with a memory).
void BM_Backward(benchmark::State& state, const std::string& name, const std::string& config,
                 bool causal) {
  const int64_t n = state.range(0);
  Tensor<float> q({1, n, kHeads, kDim}), k({1, n, kHeads, kDim}), v({1, n, kHeads, kDim});
  Tensor<float> out({1, n, kHeads, kDim}), dout({1, n, kHeads, kDim});
  Tensor<float> dq({1, n, kHeads, kDim}), dk({1, n, kHeads, kDim}), dv({1, n, kHeads, kDim});
  Tensor<float> mem({1, kMemory, kHeads, kDim}), dmem({1, kMemory, kHeads, kDim});
  std::mt19937 rng(2);
  std::normal_distribution<float> d;
  for (auto* t : {&q, &k, &v, &dout, &mem})
    for (float& x : t->vec()) x = 0.5f * d(rng);
  const auto m = make_mechanism(name, {.causal = causal}, config);
  Context ctx(0);
  BackwardArgs g{.forward = {.q = q.cview(), .k = k.cview(), .v = v.cview(), .out = out.view()},
                 .dout = dout.cview(),
                 .dq = dq.view(),
                 .dk = dk.view(),
                 .dv = dv.view()};
  if (m->capabilities().needs_memory) {
    g.forward.memory = mem.cview();
    g.dmemory = dmem.view();
  }
  m->forward(g.forward, ctx);
  for (auto _ : state) m->backward(g, ctx);
  state.counters["tokens"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK_CAPTURE(BM_Backward, linear_elu1_kernel_causal, "linear", "map=elu1,norm=kernel", true)
    ->Arg(1024)
    ->Arg(4096)
    ->Arg(16384)
    ->ArgName("N")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Registered at start-up from the registry, so a new mechanism is benchmarked too.
const bool kRegistered = [] {
  for (const std::string& name : mechanism_names()) {
    for (bool causal : {false, true}) {
      if (causal && !make_mechanism(name)->capabilities().causal) continue;
      auto* b = benchmark::RegisterBenchmark(
          (name + (causal ? "/causal" : "/noncausal")).c_str(),
          [name, causal](benchmark::State& s) { BM_Mechanism(s, name, causal); });
      b->ArgName("N")->Unit(benchmark::kMillisecond)->UseRealTime();
      for (int64_t n : {1024, 4096}) {
        if (name == "ra" && n > 1024) continue;  // quadratic, ~2x softmax per sample
        b->Arg(n);
      }
      if (!make_mechanism(name)->capabilities().backward) continue;
      auto* bw = benchmark::RegisterBenchmark(
          (name + (causal ? "/causal" : "/noncausal") + "/backward").c_str(),
          [name, causal](benchmark::State& s) { BM_Backward(s, name, "", causal); });
      bw->ArgName("N")->Unit(benchmark::kMillisecond)->UseRealTime()->Arg(1024)->Arg(4096);
    }
  }
  return true;
}();

}  // namespace
}  // namespace attnkit
