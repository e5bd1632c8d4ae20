// Context: a persistent thread pool (the caller is worker 0) and per-worker scratch.
#include "attnkit/context.hpp"

#include <hwy/aligned_allocator.h>
#include <hwy/targets.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace attnkit {

struct Context::Impl {
  int threads = 1;
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable wake, done;
  uint64_t generation = 0;
  bool stop = false;
  int running = 0;
  const std::function<void(int64_t, int)>* fn = nullptr;
  int64_t tasks = 0;
  std::atomic<int64_t> next{0};

  std::vector<hwy::AlignedFreeUniquePtr<float[]>> scratch;
  size_t scratch_floats = 0;
  hwy::AlignedFreeUniquePtr<float[]> shared;
  size_t shared_floats = 0;

  void drain(int worker) {
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < tasks;) (*fn)(t, worker);
  }

  void loop(int worker) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lock(mu);
        wake.wait(lock, [&] { return stop || generation != seen; });
        if (stop) return;
        seen = generation;
      }
      drain(worker);
      std::lock_guard lock(mu);
      if (--running == 0) done.notify_one();
    }
  }
};

Context::Context(int threads) : impl_(std::make_unique<Impl>()) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  impl_->threads = threads;
  impl_->scratch.resize(threads);
  for (int w = 1; w < threads; ++w) impl_->workers.emplace_back([this, w] { impl_->loop(w); });
}

Context::~Context() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->wake.notify_all();
  for (auto& t : impl_->workers) t.join();
}

int Context::num_threads() const { return impl_->threads; }

void Context::parallel_for(int64_t tasks, const std::function<void(int64_t, int)>& fn,
                           double work) {
  Impl& p = *impl_;
  if (tasks <= 0) return;
  constexpr double kMinParallelWork = 1e6;  // flops; a wake-up round trip is ~10 us
  if (p.threads == 1 || tasks == 1 || work < kMinParallelWork) {
    for (int64_t t = 0; t < tasks; ++t) fn(t, 0);
    return;
  }
  {
    std::lock_guard lock(p.mu);
    p.fn = &fn;
    p.tasks = tasks;
    p.next.store(0, std::memory_order_relaxed);
    p.running = p.threads - 1;
    ++p.generation;
  }
  p.wake.notify_all();
  p.drain(0);
  std::unique_lock lock(p.mu);
  p.done.wait(lock, [&] { return p.running == 0; });
  p.fn = nullptr;
}

void Context::reserve_scratch(size_t floats) {
  Impl& p = *impl_;
  if (floats <= p.scratch_floats) return;
  for (auto& s : p.scratch) s = hwy::AllocateAligned<float>(floats);
  p.scratch_floats = floats;
}

float* Context::scratch(int worker) const { return impl_->scratch[worker].get(); }

float* Context::shared_scratch(size_t floats) {
  Impl& p = *impl_;
  if (floats > p.shared_floats) {
    p.shared = hwy::AllocateAligned<float>(floats);
    p.shared_floats = floats;
  }
  return p.shared.get();
}

size_t Context::workspace_bytes() const {
  return (impl_->scratch_floats * impl_->threads + impl_->shared_floats) * sizeof(float);
}

std::string Context::cpu_report() {
  // Highway orders targets best-first; dynamic dispatch picks the first one.
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  std::string s = "dispatch: ";
  s += targets.empty() ? "none" : hwy::TargetName(targets.front());
  s += "; supported and compiled:";
  for (int64_t t : targets) {
    s += ' ';
    s += hwy::TargetName(t);
  }
  return s;
}

}  // namespace attnkit
