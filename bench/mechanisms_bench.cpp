// Every registered mechanism's forward pass on the same shapes (B=1, H=8, D=64), causal
// where it has a causal form, with exact softmax in the same run for ratios.
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
    }
  }
  return true;
}();

}  // namespace
}  // namespace attnkit
