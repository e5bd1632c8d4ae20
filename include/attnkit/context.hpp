// Context: the explicit runtime every kernel runs under. It owns a small
// thread pool and per-worker scratch, so kernels never allocate in hot loops.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace attnkit {

class Context {
 public:
  // threads <= 0: one per hardware thread.
  explicit Context(int threads = 0);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int num_threads() const;

  // Runs fn(task, worker) for task in [0, tasks); worker in [0, num_threads()).
  // Tasks are claimed dynamically; each task must own its outputs, so results do
  // not depend on the thread count. Not reentrant.
  // work: estimated flops of all tasks together; below ~1 MFLOP waking the pool costs more
  // than it saves, so the caller's thread runs them all.
  void parallel_for(int64_t tasks, const std::function<void(int64_t task, int worker)>& fn,
                    double work = 1e12);

  // Per-worker scratch of at least `floats` floats, 64-byte aligned. Call
  // reserve_scratch before parallel_for; scratch() never allocates.
  void reserve_scratch(size_t floats_per_worker);
  float* scratch(int worker) const;
  // One shared buffer (e.g. packed keys), valid until the next call.
  float* shared_scratch(size_t floats);

  // Bytes held in workspaces (for memory reports).
  size_t workspace_bytes() const;

  // The SIMD targets compiled in and the one dispatched on this CPU.
  static std::string cpu_report();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attnkit
