// The machine's measured fp32 FMA peak: independent FMA chains on the widest vectors
// Highway dispatches to, one task per thread. Kernels' GFLOP/s are read against this.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench/peak_bench.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep (re-includes this file per target)
#include <hwy/highway.h>
// clang-format on

#include <benchmark/benchmark.h>

#include "attnkit/context.hpp"
#include "src/cpu/kernels.hpp"
#include "src/cpu/tiles.hpp"

HWY_BEFORE_NAMESPACE();
namespace attnkit::bench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// 2 * lanes * 16 accumulators * iters flops; returns a value so nothing is elided.
float FmaLoop(int64_t iters) {
  const hn::ScalableTag<float> d;
  // Distinct starting values, or the compiler merges identical chains into one.
  auto a0 = hn::Set(d, 1.00f), a1 = hn::Set(d, 1.01f), a2 = hn::Set(d, 1.02f),
       a3 = hn::Set(d, 1.03f);
  auto a4 = hn::Set(d, 1.04f), a5 = hn::Set(d, 1.05f), a6 = hn::Set(d, 1.06f),
       a7 = hn::Set(d, 1.07f);
  auto a8 = hn::Set(d, 1.08f), a9 = hn::Set(d, 1.09f), a10 = hn::Set(d, 1.10f),
       a11 = hn::Set(d, 1.11f);
  auto a12 = hn::Set(d, 1.12f), a13 = hn::Set(d, 1.13f), a14 = hn::Set(d, 1.14f),
       a15 = hn::Set(d, 1.15f);
  const auto m = hn::Set(d, 0.999999f), c = hn::Set(d, 1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
    a0 = hn::MulAdd(a0, m, c), a1 = hn::MulAdd(a1, m, c), a2 = hn::MulAdd(a2, m, c);
    a3 = hn::MulAdd(a3, m, c), a4 = hn::MulAdd(a4, m, c), a5 = hn::MulAdd(a5, m, c);
    a6 = hn::MulAdd(a6, m, c), a7 = hn::MulAdd(a7, m, c), a8 = hn::MulAdd(a8, m, c);
    a9 = hn::MulAdd(a9, m, c), a10 = hn::MulAdd(a10, m, c), a11 = hn::MulAdd(a11, m, c);
    a12 = hn::MulAdd(a12, m, c), a13 = hn::MulAdd(a13, m, c), a14 = hn::MulAdd(a14, m, c);
    a15 = hn::MulAdd(a15, m, c);
  }
  auto s =
      hn::Add(hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)), hn::Add(hn::Add(a4, a5), hn::Add(a6, a7)));
  s = hn::Add(s, hn::Add(hn::Add(hn::Add(a8, a9), hn::Add(a10, a11)),
                         hn::Add(hn::Add(a12, a13), hn::Add(a14, a15))));
  return hn::GetLane(s);
}
size_t Lanes() { return hn::Lanes(hn::ScalableTag<float>()); }

}  // namespace HWY_NAMESPACE
}  // namespace attnkit::bench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::bench {
namespace {

HWY_EXPORT(FmaLoop);
HWY_EXPORT(Lanes);

void BM_FmaPeak(benchmark::State& state) {
  Context ctx(0);
  const int64_t iters = 1 << 22;
  float sink = 0;
  for (auto _ : state) {
    ctx.parallel_for(ctx.num_threads(),
                     [&](int64_t, int) { sink += HWY_DYNAMIC_DISPATCH(FmaLoop)(iters); });
  }
  benchmark::DoNotOptimize(sink);
  const double flops =
      2.0 * 16 * static_cast<double>(HWY_DYNAMIC_DISPATCH(Lanes)()) * iters * ctx.num_threads();
  state.counters["GFLOP"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = ctx.num_threads();
}
BENCHMARK(BM_FmaPeak)->Unit(benchmark::kMillisecond)->UseRealTime();

// The bfloat16 peaks the bf16 kernels are read against: AMX TDPBF16PS and AVX512-BF16
// VDPBF16PS, one loop per thread on registers only.
void BM_AmxBf16Peak(benchmark::State& state) {
  if (!cpu::tiles::amx_usable()) {
    state.SkipWithError((std::string("no AMX: ") + cpu::tiles::amx_refusal()).c_str());
    return;
  }
  Context ctx(0);
  const int64_t iters = 1 << 16;
  for (auto _ : state) {
    ctx.parallel_for(ctx.num_threads(), [&](int64_t, int) { cpu::tiles::amx_peak_loop(iters); });
  }
  state.counters["GFLOP"] =
      benchmark::Counter(cpu::tiles::kAmxPeakFlopsPerIter * iters * ctx.num_threads() * 1e-9,
                         benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = ctx.num_threads();
}
BENCHMARK(BM_AmxBf16Peak)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_DotBf16Peak(benchmark::State& state) {
  if (!cpu::tiles::dot_usable()) {
    state.SkipWithError("no AVX512-BF16");
    return;
  }
  Context ctx(0);
  const int64_t iters = 1 << 20;
  float sink = 0;
  for (auto _ : state) {
    ctx.parallel_for(ctx.num_threads(),
                     [&](int64_t, int) { sink += cpu::bf16::dot_peak_loop(iters); });
  }
  benchmark::DoNotOptimize(sink);
  state.counters["GFLOP"] = benchmark::Counter(1024.0 * iters * ctx.num_threads() * 1e-9,
                                               benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = ctx.num_threads();
}
BENCHMARK(BM_DotBf16Peak)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace attnkit::bench
#endif  // HWY_ONCE
