// Context: a persistent thread pool (the caller is worker 0) and per-worker scratch.
#include "attnkit/context.hpp"

#include <hwy/targets.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "attnkit/error.hpp"
#include "src/cpu/tiles.hpp"
#include "src/runtime/memory.hpp"

namespace attnkit {
namespace {

// The cgroup v2 CPU quota (cpu.max "quota period"), rounded up; 0 when there is none.
int cgroup_cpus() {
  std::ifstream f("/sys/fs/cgroup/cpu.max");
  std::string quota;
  long long period = 0;
  if (!(f >> quota >> period) || quota == "max" || period <= 0) return 0;
  const long long q = std::atoll(quota.c_str());
  return q > 0 ? static_cast<int>((q + period - 1) / period) : 0;
}

}  // namespace

// Waits up to kSpin for ready() to hold, pausing between looks; returns whether it did.
// Workers and the caller spin this long before they sleep on a condition variable: waking
// a sleeping thread costs a futex call and, in a VM, an inter-processor interrupt (10-40 us
// measured), as much as a whole decode step at 1k context. Calls that follow each other
// closely (decode loops, training steps, one layer after another) find the workers awake.
constexpr auto kSpin = std::chrono::microseconds(50);
template <typename Ready>
bool spin_until(Ready ready) {
  const auto end = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (ready()) return true;
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > end) return false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

// The workers and what they synchronise on. A child process after fork() has none of the
// threads and possibly a mutex locked by one of them, so it abandons the parent's Pool
// (never touching it) and starts a fresh one. generation, stop and running are atomics so
// that spinning threads see them without the mutex. generation and stop change under it,
// and the last worker to decrement running takes it to notify, so a thread that checks its
// condition under the mutex before it sleeps cannot miss the notification.
struct Pool {
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable wake, done;
  std::atomic<uint64_t> generation{0};
  std::atomic<bool> stop{false};
  std::atomic<int> running{0};
  const std::function<void(int64_t, int)>* fn = nullptr;
  int64_t tasks = 0;
  std::atomic<int64_t> next{0};

  void drain(int worker) {
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < tasks;) (*fn)(t, worker);
  }

  void loop(int worker) {
    uint64_t seen = 0;
    for (;;) {
      const auto fresh = [&] { return stop.load() || generation.load() != seen; };
      if (!spin_until(fresh)) {
        std::unique_lock lock(mu);
        wake.wait(lock, fresh);
      }
      if (stop.load()) return;
      seen = generation.load();
      drain(worker);
      if (running.fetch_sub(1) == 1) {
        std::lock_guard lock(mu);
        done.notify_one();
      }
    }
  }

  void shutdown() {
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    wake.notify_all();
    for (auto& t : workers) t.join();
    workers.clear();
  }

  // Starts threads - 1 workers; on failure stops the ones started and throws.
  void start(int threads) {
    for (int w = 1; w < threads; ++w) {
      try {
        workers.emplace_back([this, w] { loop(w); });
      } catch (const std::system_error& e) {
        shutdown();
        throw Error("threads", "could not start worker thread " + std::to_string(w) + " of " +
                                   std::to_string(threads - 1) + " (" + e.what() +
                                   "); ask for fewer threads");
      }
    }
  }
};

struct Context::Impl {
  int threads = 1;
  pid_t pid = 0;  // the process that started `pool`
  std::unique_ptr<Pool> pool;
  double min_parallel_work = 1e6;

  std::vector<hwy::AlignedFreeUniquePtr<float[]>> scratch;
  size_t scratch_floats = 0;
  hwy::AlignedFreeUniquePtr<float[]> shared[kSharedSlots];
  size_t shared_floats[kSharedSlots] = {};

  Pool& current_pool() {
    if (pid != getpid()) {
      // Forked: the parent's threads do not exist here and its mutex may be held. Leak the
      // old pool (destroying joinable threads would terminate) and start a new one.
      (void)pool.release();
      pool = std::make_unique<Pool>();
      pool->start(threads);
      pid = getpid();
    }
    return *pool;
  }
};

int Context::available_cpus() {
  int n = 0;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  const int quota = cgroup_cpus();
  if (quota > 0) n = std::min(n, quota);
  return std::max(n, 1);
}

int Context::default_threads() { return available_cpus(); }

int Context::max_threads() { return std::max(4 * available_cpus(), 64); }

void Context::check_thread_count(int threads) {
  if (threads > max_threads()) {
    throw Error("threads", "must be <= " + std::to_string(max_threads()) +
                               " (max of 64 and 4x the " + std::to_string(available_cpus()) +
                               " CPUs this process may use), got " + std::to_string(threads));
  }
}

Context::Context(int threads) : impl_(std::make_unique<Impl>()) {
  if (threads <= 0) threads = default_threads();
  check_thread_count(threads);
  impl_->threads = threads;
  impl_->scratch.resize(threads);
  impl_->pool = std::make_unique<Pool>();
  impl_->pool->start(threads);
  impl_->pid = getpid();
}

Context::~Context() {
  if (impl_->pid == getpid()) {
    impl_->pool->shutdown();
  } else {
    (void)impl_->pool.release();  // a forked child: the threads are the parent's
  }
}

int Context::num_threads() const { return impl_->threads; }

void Context::set_min_parallel_work(double flops) { impl_->min_parallel_work = flops; }

void Context::parallel_for(int64_t tasks, const std::function<void(int64_t, int)>& fn,
                           double work) {
  if (tasks <= 0) return;
  if (impl_->threads == 1 || tasks == 1 || work < impl_->min_parallel_work) {
    for (int64_t t = 0; t < tasks; ++t) fn(t, 0);
    return;
  }
  Pool& p = impl_->current_pool();
  {
    std::lock_guard lock(p.mu);
    p.fn = &fn;
    p.tasks = tasks;
    p.next.store(0, std::memory_order_relaxed);
    p.running.store(impl_->threads - 1);
    p.generation.fetch_add(1);
  }
  p.wake.notify_all();
  p.drain(0);
  const auto finished = [&] { return p.running.load() == 0; };
  if (!spin_until(finished)) {
    std::unique_lock lock(p.mu);
    p.done.wait(lock, finished);
  }
  p.fn = nullptr;
}

void Context::reserve_scratch(size_t floats) {
  Impl& p = *impl_;
  if (floats <= p.scratch_floats) return;
  p.scratch_floats = 0;
  for (auto& s : p.scratch) s.reset();  // the old buffers go first: they may be large
  for (auto& s : p.scratch) s = detail::allocate(floats, "workspace (per-thread scratch)");
  p.scratch_floats = floats;
}

float* Context::scratch(int worker) const { return impl_->scratch[worker].get(); }

float* Context::shared_scratch(size_t floats, int slot) {
  Impl& p = *impl_;
  if (floats > p.shared_floats[slot]) {
    p.shared_floats[slot] = 0;
    p.shared[slot].reset();
    p.shared[slot] = detail::allocate(floats, "workspace (shared scratch)");
    p.shared_floats[slot] = floats;
  }
  return p.shared[slot].get();
}

void Context::trim(size_t keep_bytes) {
  Impl& p = *impl_;
  if (workspace_bytes() <= keep_bytes) return;
  for (auto& s : p.scratch) s.reset();
  p.scratch_floats = 0;
  for (int s = 0; s < kSharedSlots; ++s) p.shared[s].reset(), p.shared_floats[s] = 0;
}

size_t Context::workspace_bytes() const {
  size_t floats = impl_->scratch_floats * impl_->threads;
  for (size_t s : impl_->shared_floats) floats += s;
  return floats * sizeof(float);
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
  s += "; bf16: " + bf16_path();
  if (!cpu::tiles::amx_usable()) s += std::string(" (no amx: ") + cpu::tiles::amx_refusal() + ")";
  return s;
}

namespace {
constexpr cpu::tiles::Bf16Path kBf16Paths[] = {
    cpu::tiles::Bf16Path::kAmx, cpu::tiles::Bf16Path::kDot, cpu::tiles::Bf16Path::kAmxEmulated,
    cpu::tiles::Bf16Path::kWiden};
bool usable(cpu::tiles::Bf16Path p) {
  // The tile kernels' softmax is AVX512-BF16 code too (every AMX CPU has it).
  return p == cpu::tiles::Bf16Path::kAmx     ? cpu::tiles::amx_usable()
         : p == cpu::tiles::Bf16Path::kWiden ? true
                                             : cpu::tiles::dot_usable();
}
}  // namespace

std::vector<std::string> Context::bf16_paths() {
  std::vector<std::string> names;
  for (cpu::tiles::Bf16Path p : kBf16Paths)
    if (usable(p)) names.emplace_back(cpu::tiles::name(p));
  return names;
}

std::string Context::bf16_path() { return cpu::tiles::name(cpu::tiles::bf16_path()); }

std::string Context::amx_refusal() { return cpu::tiles::amx_refusal(); }

void Context::set_bf16_path(const std::string& path) {
  cpu::tiles::reset_bf16_path();
  if (path.empty()) return;
  for (cpu::tiles::Bf16Path p : kBf16Paths) {
    if (path == cpu::tiles::name(p) && cpu::tiles::force_bf16_path(p)) return;
  }
  std::string known;
  for (const std::string& n : bf16_paths()) known += (known.empty() ? "" : ", ") + n;
  const std::string why = cpu::tiles::amx_usable() ? "" : "; no amx: " + amx_refusal();
  throw Error("bf16_path", "'" + path + "' is not a bfloat16 path this CPU can take (have: " +
                               known + why + ")");
}

std::vector<std::string> Context::simd_targets() {
  std::vector<std::string> names;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) names.emplace_back(hwy::TargetName(t));
  return names;
}

void Context::set_simd_target(const std::string& target) {
  hwy::SetSupportedTargetsForTest(0);  // back to all the CPU supports ("" stops here)
  if (target.empty()) return;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) {
    if (target == hwy::TargetName(t)) {
      hwy::SetSupportedTargetsForTest(t);
      return;
    }
  }
  std::string known;
  for (const std::string& n : simd_targets()) known += (known.empty() ? "" : ", ") + n;
  throw Error("simd_target",
              "'" + target + "' is not compiled or not supported here (have: " + known + ")");
}

}  // namespace attnkit
