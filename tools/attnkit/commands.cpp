// attnkit run and list, and the config helpers every command shares.
#include "tools/attnkit/commands.hpp"

#include <algorithm>
#include <iostream>

#include "src/io/npy.hpp"

namespace attnkit::cli {
namespace {

// An npy array as a [B, S, H, D] view. Rank 2 is [S, D]; ranks 3 and 4 are [S, H, D] and
// [B, S, H, D] (bshd) or [H, S, D] and [B, H, S, D] (bhsd, read through strides).
ConstTensorView as_bshd(const Tensor<float>& t, const std::string& name,
                        const std::string& layout) {
  const auto& s = t.shape();
  if (s.size() < 2 || s.size() > 4) {
    throw Error(name, "npy rank must be 2 ([seq, dim]), 3 or 4 (see --layout), got " +
                          std::to_string(s.size()));
  }
  std::vector<int64_t> d(s.begin(), s.end());
  while (d.size() < 4) d.insert(d.begin() + (d.size() == 2 ? 1 : 0), 1);  // B = 1 (and H = 1)
  ConstTensorView v = t.view();
  v.rank = 4;
  if (layout == "bhsd" && s.size() > 2) {
    const int64_t B = d[0], H = d[1], S = d[2], D = d[3];
    v.shape = {B, S, H, D};
    v.stride = {H * S * D, D, S * D, 1};
  } else {
    v.shape = {d[0], d[1], d[2], d[3]};
    v.stride = {d[1] * d[2] * d[3], d[2] * d[3], d[3], 1};
  }
  return v;
}

std::string dims(const ConstTensorView& v) {
  return "[B=" + std::to_string(v.shape[0]) + ", S=" + std::to_string(v.shape[1]) +
         ", H=" + std::to_string(v.shape[2]) + ", D=" + std::to_string(v.shape[3]) + "]";
}

// q's (seq, heads) are k's (heads, seq) with different head counts: one file is [B, H, S, D]
// and the other [B, S, H, D]. Read as one layout this would run silently as GQA.
void check_layouts_agree(const ConstTensorView& q, const ConstTensorView& k, int q_rank,
                         int k_rank) {
  if (q_rank != k_rank) {
    throw Error("--k", "npy rank (" + std::to_string(k_rank) + ") must equal --q's (" +
                           std::to_string(q_rank) + "): all inputs share one --layout");
  }
  if (q.shape[1] != q.shape[2] && q.shape[1] == k.shape[2] && q.shape[2] == k.shape[1]) {
    throw Error("--q", "shape " + dims(q) + " against --k " + dims(k) +
                           ": seq and heads are swapped between the files (one is [B, H, S, D], "
                           "the other [B, S, H, D]?); write both in one layout and pass it with "
                           "--layout");
  }
}

std::vector<int32_t> key_lengths(const std::string& text) {
  std::vector<int32_t> out;
  for (int64_t x : parse_int_list(text, "--key-lengths", 0, (int64_t{1} << 31) - 1))
    out.push_back(static_cast<int32_t>(x));
  return out;
}

// A [B, S, H, D] (or memory-shaped) output for the view `like`, written as the input files are.
Tensor<float> output_like(const std::vector<int64_t>& file_shape, int64_t last) {
  std::vector<int64_t> s = file_shape;
  s.back() = last;
  return Tensor<float>(s);
}

// A writable [B, S, H, D] view of t, read in `layout` as the input files are.
TensorView writable(Tensor<float>& t, const std::string& layout) {
  const ConstTensorView v = as_bshd(t, "out", layout);
  TensorView w = t.view();
  w.rank = 4;
  w.shape = v.shape;
  w.stride = v.stride;
  return w;
}

}  // namespace

namespace {
// Where the mechanism name of a -c name:key=value,... ends.
size_t config_colon(const std::string& s) {
  const size_t colon = s.find(':');
  if (colon == std::string::npos) throw Error("--config", "'" + s + "' must be name:key=value,...");
  return colon;
}
}  // namespace

std::string config_for(const Common& c, const std::string& name) {
  std::string joined;
  for (const std::string& s : c.configs) {
    const size_t colon = config_colon(s);
    if (s.compare(0, colon, name) != 0 || colon != name.size()) continue;
    if (!joined.empty()) joined.push_back(',');
    joined.append(s, colon + 1);
  }
  return joined;  // a key in two -c options is an Error from the parser ("given twice")
}

std::unique_ptr<Mechanism> make(const Common& c, const std::string& name) {
  return make_mechanism(name, {.scale = c.scale, .causal = c.causal}, config_for(c, name));
}

int threads_of(const Common& c) { return c.threads > 0 ? c.threads : Context::default_threads(); }

void check_configs(const Common& c, const std::vector<std::string>& used) {
  for (const std::string& s : c.configs) {
    const std::string name = s.substr(0, config_colon(s));
    if (std::find(used.begin(), used.end(), name) == used.end()) {
      const auto all = mechanism_names();
      throw Error("--config", "'" + s + "' names " +
                                  (std::find(all.begin(), all.end(), name) == all.end()
                                       ? "no known mechanism"
                                       : "'" + name + "', which this command does not run"));
    }
  }
}

std::pair<int64_t, int64_t> window_of(const Common& c) {
  if (c.window.empty()) return {-1, -1};
  const std::vector<int64_t> w = parse_int_list(c.window, "--window", -1, (int64_t{1} << 31) - 1);
  if (w.size() > 2)
    throw Error("--window", "must be L or L,R (keys before, after; -1 = unbounded)");
  return {w[0], w.size() == 2 ? w[1] : -1};
}

void apply_masks(const Common& c, AttentionArgs& a) {
  std::tie(a.mask.window_left, a.mask.window_right) = window_of(c);
  a.mask.softcap = c.softcap;
}

std::string mask_text(const Common& c) {
  std::string s;
  const auto [left, right] = window_of(c);
  if (left != -1 || right != -1)
    s.append(" window=(")
        .append(std::to_string(left))
        .append(",")
        .append(std::to_string(right))
        .append(")");
  if (c.softcap > 0) s.append(" softcap=").append(fmt(c.softcap));
  return s;
}

void add_mask_meta(const Common& c, nlohmann::json& meta) {
  const auto [left, right] = window_of(c);
  if (left != -1 || right != -1) meta["window"] = {left, right};
  if (c.softcap > 0) meta["softcap"] = c.softcap;
}

int cmd_run(const Common& c, const RunArgs& r) {
  check_configs(c, {r.mechanism});
  const auto m = make(c, r.mechanism);
  const Tensor<float> q = io::read_npy(r.q), k = io::read_npy(r.k), v = io::read_npy(r.v);
  AttentionArgs a;
  a.q = as_bshd(q, r.q, r.layout);
  a.k = as_bshd(k, r.k, r.layout);
  a.v = as_bshd(v, r.v, r.layout);
  check_layouts_agree(a.q, a.k, static_cast<int>(q.shape().size()),
                      static_cast<int>(k.shape().size()));
  Tensor<float> memory, gate;
  if (!r.memory.empty()) {
    memory = io::read_npy(r.memory);
    a.memory = as_bshd(memory, r.memory, r.layout);
  }
  if (!r.gate.empty()) {
    gate = io::read_npy(r.gate);
    a.gate = gate.view();
  }
  std::vector<int32_t> lengths;
  if (!r.key_lengths.empty()) {
    lengths = key_lengths(r.key_lengths);
    a.key_lengths = lengths;
  }
  if (!r.memory_out.empty() && r.memory.empty()) throw Error("--memory-out", "needs --memory");
  apply_masks(c, a);
  // Every rule is checked before the outputs (sized from the inputs) are allocated.
  m->validate_inputs(a);
  Tensor<float> out = output_like(q.shape(), a.v.shape[3]), memory_out;
  a.out = writable(out, r.layout);
  if (!r.memory.empty()) {
    memory_out = output_like(memory.shape(), a.v.shape[3]);
    a.memory_out = writable(memory_out, r.layout);
  }
  Context ctx(c.threads);
  const Timing t = time_runs(0, 1, [&] { m->forward(a, ctx); });
  io::write_npy(r.out, out.data(), out.shape());
  if (!r.memory_out.empty()) io::write_npy(r.memory_out, memory_out.data(), memory_out.shape());
  std::cerr << m->describe() << ": read q " << dims(a.q) << ", k " << dims(a.k) << " (" << r.layout
            << "); wrote " << r.out << " in " << fmt(t.median_s * 1e3) << " ms\n";
  return 0;
}

int cmd_list(const Common& c) {
  Table table{{"mechanism", "causal", "streaming", "backward", "defaults"}, {}};
  Table keys{{"mechanism", "key", "type", "default", "allowed", "meaning"}, {}};
  for (const std::string& name : mechanism_names()) {
    const auto m = make_mechanism(name);
    const Capabilities cap = m->capabilities();
    table.rows.push_back({name, cap.causal, cap.streaming, cap.backward, m->describe()});
    for (const ConfigKey& k : config_keys(name))
      keys.rows.push_back({name, k.key, k.type, k.default_value, k.allowed, k.help});
  }
  if (c.format == "json") {
    table.meta = run_meta("list", Context::default_threads());
    for (const auto& row : keys.rows) {
      table.meta["config_keys"][row[0].get<std::string>()].push_back({{"key", row[1]},
                                                                      {"type", row[2]},
                                                                      {"default", row[3]},
                                                                      {"allowed", row[4]},
                                                                      {"meaning", row[5]}});
    }
    std::cout << table.render("json");
    return 0;
  }
  std::cout << table.render(c.format);
  if (c.format == "table") {
    std::cout << "\nconfig keys (-c name:key=value,...):\n"
              << keys.render("table") << "\n"
              << Context::cpu_report() << "\n"
              << "bfloat16 paths here:";
    for (const std::string& path : Context::bf16_paths()) std::cout << ' ' << path;
    std::cout << "\n";
  }
  return 0;
}

}  // namespace attnkit::cli
