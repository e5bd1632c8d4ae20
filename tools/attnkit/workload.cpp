#include "tools/attnkit/workload.hpp"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
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

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o;
}

bool is_number(const std::string& s) {
  if (s.empty()) return false;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

}  // namespace

Workload::Workload(const Shape& s, uint64_t seed)
    : shape(s),
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

Progress::Progress(int total) : total_(total), tty_(isatty(STDERR_FILENO) != 0) {}

void Progress::step(const std::string& what) {
  ++done_;
  if (tty_) std::fprintf(stderr, "\r\033[K[%d/%d] %s", done_, total_, what.c_str());
}

Progress::~Progress() {
  if (tty_ && done_ > 0) std::fprintf(stderr, "\r\033[K");
}

std::string Table::render(const std::string& format) const {
  std::ostringstream o;
  if (format == "csv") {
    for (size_t c = 0; c < columns.size(); ++c) o << (c ? "," : "") << columns[c];
    o << "\n";
    for (const auto& r : rows) {
      for (size_t c = 0; c < r.size(); ++c) o << (c ? "," : "") << r[c];
      o << "\n";
    }
  } else if (format == "json") {
    o << "[\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      o << "  {";
      for (size_t c = 0; c < columns.size(); ++c) {
        o << (c ? ", " : "") << "\"" << columns[c] << "\": ";
        if (is_number(rows[i][c])) {
          o << rows[i][c];
        } else {
          o << "\"" << json_escape(rows[i][c]) << "\"";
        }
      }
      o << "}" << (i + 1 < rows.size() ? "," : "") << "\n";
    }
    o << "]\n";
  } else {
    std::vector<size_t> w(columns.size());
    for (size_t c = 0; c < columns.size(); ++c) {
      w[c] = columns[c].size();
      for (const auto& r : rows) w[c] = std::max(w[c], r[c].size());
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
    for (const auto& r : rows) line(r);
  }
  return o.str();
}

std::string fmt(double x, int precision) {
  std::ostringstream o;
  o.precision(precision);
  o << x;
  return o.str();
}

std::vector<int64_t> parse_int_list(const std::string& text, const std::string& option) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || end != item.c_str() + item.size() || v < 1) {
      throw Error(option, "'" + item + "' must be a positive integer (comma-separated list)");
    }
    out.push_back(v);
  }
  if (out.empty()) throw Error(option, "must not be empty");
  return out;
}

}  // namespace attnkit::cli
