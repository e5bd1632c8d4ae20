// CLI helpers: random workloads, timing, peak-memory measurement, tables, progress.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attnkit/attnkit.hpp"

namespace attnkit::cli {

struct Shape {
  int64_t batch = 1, heads = 8, kv_heads = 0, seq = 1024, kv_seq = 0, dim = 64, memory = 16;
  int64_t hk() const { return kv_heads > 0 ? kv_heads : heads; }
  int64_t sk() const { return kv_seq > 0 ? kv_seq : seq; }
};

// Random float32 inputs for one shape (N(0,1) q, k, v; memory for Luna-like mechanisms).
struct Workload {
  Shape shape;
  Tensor<float> q, k, v, memory, gate;
  explicit Workload(const Shape& s, uint64_t seed);
  // Args writing into out (and memory_out when the mechanism needs memory).
  AttentionArgs args(const Mechanism& m, Tensor<float>& out, Tensor<float>& memory_out) const;
};

// Median and minimum seconds of `reps` timed runs after `warmup` untimed ones.
struct Timing {
  double median_s = 0, min_s = 0;
};
Timing time_runs(int warmup, int reps, const std::function<void()>& fn);

// Peak resident memory growth (bytes) while fn runs, from /proc/self (VmHWM reset through
// clear_refs); -1 where the kernel does not allow the reset.
int64_t peak_memory_growth(const std::function<void()>& fn);

// "\r[i/n] what  elapsed 3.2 s, ETA 5.1 s" on stderr when it is a terminal.
class Progress {
 public:
  explicit Progress(int total);
  void step(const std::string& what);
  ~Progress();

 private:
  int total_, done_ = 0;
  bool tty_;
  double start_s_;
};

// A table printed as aligned text, CSV (RFC 4180 quoting) or JSON (nlohmann-json: an object
// with `meta` and `rows`, numbers and booleans as such). Cells are JSON values: strings,
// numbers, booleans, or null for "not applicable".
struct Table {
  std::vector<std::string> columns;
  std::vector<std::vector<nlohmann::json>> rows;
  nlohmann::json meta = nlohmann::json::object();       // version, cpu, simd, threads, shape, ...
  std::string render(const std::string& format) const;  // "table", "csv", "json"
};
// The metadata every JSON report carries: attnkit version, CPU model, SIMD target, threads.
nlohmann::json run_meta(const std::string& command, int threads);
nlohmann::json shape_json(const Shape& s, bool causal);

std::string fmt(double x, int precision = 3);
// Comma-separated integers in [min, max]; out-of-range or overflowing values are errors
// naming the option (never narrowed).
std::vector<int64_t> parse_int_list(const std::string& text, const std::string& option,
                                    int64_t min = 1, int64_t max = int64_t{1} << 40);

}  // namespace attnkit::cli
