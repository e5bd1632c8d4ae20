// Context: the explicit runtime every kernel runs under. It owns a small
// thread pool and per-worker scratch, so kernels never allocate in hot loops.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace attnkit {

class Context {
 public:
  // threads <= 0: default_threads(). More than max_threads() is an Error("threads"), and so
  // is a worker thread the system refuses to start (no thread is left running then).
  explicit Context(int threads = 0);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int num_threads() const;

  // The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota
  // (cpu.max) when one is set. At least 1.
  static int available_cpus();
  // What threads <= 0 means: available_cpus().
  static int default_threads();
  // The largest thread count a Context accepts: max(4 x available_cpus(), 64). Above it a
  // pool only costs memory and scheduling (100000 threads exhaust the process table).
  static int max_threads();
  // Throws the Error("threads") a Context(threads) would for a count above max_threads().
  static void check_thread_count(int threads);

  // Runs fn(task, worker) for task in [0, tasks); worker in [0, num_threads()).
  // Tasks are claimed dynamically; each task must own its outputs, so results do
  // not depend on the thread count. Not reentrant: one call at a time per Context.
  // work: estimated flops of all tasks together; below min_parallel_work() waking the pool
  // costs more than it saves, so the caller's thread runs them all.
  // In a child process after fork() the pool's threads are gone; the first call there
  // starts a new pool (the parent's is left untouched). Workers spin up to 50 us after a
  // call before they sleep, so calls in quick succession skip the wake-up.
  void parallel_for(int64_t tasks, const std::function<void(int64_t task, int worker)>& fn,
                    double work = 1e12);
  // Default ~1 MFLOP (a wake-up round trip is ~10 us). Tests set 0 so that every split of
  // the work runs on several threads, however small the problem.
  void set_min_parallel_work(double flops);

  // Per-worker scratch of at least `floats` floats, 64-byte aligned. Call
  // reserve_scratch before parallel_for; scratch() never allocates. Throws
  // std::bad_alloc (what() names the size) when the memory cannot be had.
  void reserve_scratch(size_t floats_per_worker);
  float* scratch(int worker) const;
  // A shared buffer (e.g. packed keys) of at least `floats`, valid until the next call for
  // the same slot. Slot 0 serves kernels; slot 1 a call that runs a kernel inside it (the
  // softmax backward keeps its operands there while its forward pass uses slot 0); slot 2
  // (kNarrowSlot) the float32 copies of a bfloat16 / float16 call's arguments around its kernel.
  static constexpr int kSharedSlots = 3;
  static constexpr int kNarrowSlot = 2;
  float* shared_scratch(size_t floats, int slot = 0);
  // Frees the workspaces when they hold more than keep_bytes (a long-lived Context would
  // otherwise keep the largest scratch any call needed).
  void trim(size_t keep_bytes = 0);

  // Bytes held in workspaces (for memory reports).
  size_t workspace_bytes() const;

  // The SIMD targets compiled in and the one dispatched on this CPU, and the bfloat16 path.
  static std::string cpu_report();
  // Names of the compiled targets this CPU supports, best first ("AVX3", "AVX2", and the
  // portable fallback: "SCALAR" with g++, "EMU128" with clang).
  static std::vector<std::string> simd_targets();
  // Dispatches every later kernel call to `target` (one of simd_targets()), or back to the
  // best supported one for "". Process-wide; for tests and for timing the fallbacks.
  static void set_simd_target(const std::string& target);
  // The paths bfloat16 kernels can take on this CPU, best first: "amx" (AMX tiles, where
  // the CPU has them and Linux grants tile data), "avx512bf16" (VDPBF16PS scores),
  // "amx-emulated" (the AMX kernels' blocking on an emulated tile unit: slow, for tests) and
  // "fp32" (inputs widened). bf16_path() is the one taken now.
  static std::vector<std::string> bf16_paths();
  static std::string bf16_path();
  // Why "amx" is not among bf16_paths() ("" when it is): no AMX-BF16, the OS's tile state
  // off, or Linux refused the tile-data permission.
  static std::string amx_refusal();
  // Sends every later bfloat16 kernel down `path` (one of bf16_paths()), or back to the
  // best for "". Process-wide, as set_simd_target.
  static void set_bf16_path(const std::string& path);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attnkit
