#include "tools/attnkit/workload.hpp"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

namespace attnkit::cli {
namespace {

void fill_normal(Tensor<float>& t, std::mt19937_64& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (float& x : t.vec()) x = n(rng);
}

// kB value of a /proc/self/status field, -1 if missing.
int64_t status_kb(const std::string& field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  return -1;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string csv_field(const std::string& x) {
  if (x.find_first_of(",\"\r\n") == std::string::npos) return x;
  std::string o = "\"";
  for (char c : x) o += c == '"' ? std::string("\"\"") : std::string(1, c);
  return o + "\"";
}

// A cell as text: strings as they are, numbers with 4 significant digits, null as "-".
std::string cell_text(const nlohmann::json& v, bool csv) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? (csv ? "true" : "yes") : (csv ? "false" : "no");
  if (v.is_null()) return csv ? "" : "-";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  return fmt(v.get<double>(), 4);
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      return colon == std::string::npos ? line
                                        : line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

}  // namespace

// The workload's largest tensor must be allocatable in principle (the checked Tensor sizes
// would name "tensor"; this names the options).
static const Shape& checked(const Shape& s) {
  const double elems =
      static_cast<double>(s.batch) * std::max(s.seq, s.sk()) * std::max(s.heads, s.memory) * s.dim;
  if (elems >= 1099511627776.0) {
    throw Error("shape", "batch x seq x heads x dim (" + std::to_string(s.batch) + " x " +
                             std::to_string(std::max(s.seq, s.sk())) + " x " +
                             std::to_string(s.heads) + " x " + std::to_string(s.dim) +
                             ") must be < 2^40 elements");
  }
  return s;
}

Workload::Workload(const Shape& s, uint64_t seed)
    : shape(checked(s)),
      q({s.batch, s.seq, s.heads, s.dim}),
      k({s.batch, s.sk(), s.hk(), s.dim}),
      v({s.batch, s.sk(), s.hk(), s.dim}),
      memory({s.batch, s.memory, s.heads, s.dim}),
      gate({s.batch, s.sk(), s.hk()}) {
  std::mt19937_64 rng(seed);
  for (Tensor<float>* t : {&q, &k, &v, &memory, &gate}) fill_normal(*t, rng);
}

AttentionArgs Workload::args(const Mechanism& m, Tensor<float>& out,
                             Tensor<float>& memory_out) const {
  out = Tensor<float>({shape.batch, shape.seq, shape.heads, shape.dim});
  AttentionArgs a;
  a.q = q.cview();
  a.k = k.cview();
  a.v = v.cview();
  a.out = out.view();
  if (m.capabilities().needs_memory) {
    memory_out = Tensor<float>({shape.batch, shape.memory, shape.heads, shape.dim});
    a.memory = memory.cview();
    a.memory_out = memory_out.view();
  }
  return a;
}

Timing time_runs(int warmup, int reps, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < std::max(reps, 1); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front()};
}

int64_t peak_memory_growth(const std::function<void()>& fn) {
  // Large blocks come from mmap (a fixed threshold, not glibc's adaptive one) and freed
  // memory goes back to the kernel, so one mechanism's peak is not hidden in another's
  // free lists.
  static const bool fixed = mallopt(M_MMAP_THRESHOLD, 256 * 1024) == 1;
  (void)fixed;
  malloc_trim(0);
  {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";  // reset VmHWM to the current RSS
    if (!clear) {
      fn();
      return -1;
    }
  }
  const int64_t before = status_kb("VmRSS");
  fn();
  const int64_t peak = status_kb("VmHWM");
  if (before < 0 || peak < 0) return -1;
  return std::max<int64_t>(0, peak - before) * 1024;
}

Progress::Progress(int total)
    : total_(total), tty_(isatty(STDERR_FILENO) != 0), start_s_(now_s()) {}

void Progress::step(const std::string& what) {
  ++done_;
  if (!tty_) return;
  const double elapsed = now_s() - start_s_;
  // Steps done before this one took `elapsed`: the rest at the same pace.
  const std::string eta =
      done_ > 1 ? ", ETA " + fmt(elapsed / (done_ - 1) * (total_ - done_ + 1), 2) + " s" : "";
  std::fprintf(stderr, "\r\033[K[%d/%d] %s  (elapsed %s s%s)", done_, total_, what.c_str(),
               fmt(elapsed, 2).c_str(), eta.c_str());
}

Progress::~Progress() {
  if (tty_ && done_ > 0) std::fprintf(stderr, "\r\033[K");
}

std::string Table::render(const std::string& format) const {
  std::ostringstream o;
  if (format == "json") {
    nlohmann::json doc = meta;
    doc["rows"] = nlohmann::json::array();
    for (const auto& r : rows) {
      nlohmann::json row = nlohmann::json::object();
      for (size_t c = 0; c < columns.size(); ++c) row[columns[c]] = r[c];
      doc["rows"].push_back(row);
    }
    return doc.dump(2) + "\n";
  }
  if (format == "csv") {
    for (size_t c = 0; c < columns.size(); ++c) o << (c ? "," : "") << csv_field(columns[c]);
    o << "\n";
    for (const auto& r : rows) {
      for (size_t c = 0; c < r.size(); ++c) o << (c ? "," : "") << csv_field(cell_text(r[c], true));
      o << "\n";
    }
    return o.str();
  }
  std::vector<std::vector<std::string>> text;
  for (const auto& r : rows) {
    text.emplace_back();
    for (const auto& v : r) text.back().push_back(cell_text(v, false));
  }
  std::vector<size_t> w(columns.size());
  for (size_t c = 0; c < columns.size(); ++c) {
    w[c] = columns[c].size();
    for (const auto& r : text) w[c] = std::max(w[c], r[c].size());
  }
  auto line = [&](const std::vector<std::string>& r) {
    for (size_t c = 0; c < r.size(); ++c) {
      o << (c ? "  " : "") << r[c] << std::string(w[c] - r[c].size(), ' ');
    }
    o << "\n";
  };
  line(columns);
  std::vector<std::string> rule;
  for (size_t c = 0; c < columns.size(); ++c) rule.push_back(std::string(w[c], '-'));
  line(rule);
  for (const auto& r : text) line(r);
  return o.str();
}

nlohmann::json run_meta(const std::string& command, int threads) {
  return {{"attnkit_version", kVersion},
          {"command", command},
          {"cpu", cpu_model()},
          {"simd", Context::cpu_report()},
          {"bf16_path", Context::bf16_path()},
          {"threads", threads}};
}

nlohmann::json shape_json(const Shape& s, bool causal) {
  return {{"batch", s.batch},   {"seq_q", s.seq},    {"seq_k", s.sk()}, {"heads", s.heads},
          {"kv_heads", s.hk()}, {"head_dim", s.dim}, {"causal", causal}};
}

std::string fmt(double x, int precision) {
  std::ostringstream o;
  o.precision(precision);
  o << x;
  return o.str();
}

std::vector<int64_t> parse_int_list(const std::string& text, const std::string& option, int64_t min,
                                    int64_t max) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  const std::string rule = "must be integers in [" + std::to_string(min) + ", " +
                           std::to_string(max) + "] (comma-separated)";
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || end != item.c_str() + item.size() || errno == ERANGE || v < min ||
        v > max) {
      throw Error(option, "'" + item + "': " + rule);
    }
    out.push_back(v);
  }
  if (out.empty()) throw Error(option, "must not be empty");
  return out;
}

}  // namespace attnkit::cli
