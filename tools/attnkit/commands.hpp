// The attnkit subcommands.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tools/attnkit/workload.hpp"

namespace attnkit::cli {

struct Common {
  int threads = 0;
  bool causal = false;
  double scale = 0.0;
  std::vector<std::string> configs;  // "name:key=value,..."
  std::string format = "table";
  std::string simd;       // force one compiled SIMD target ("": the best this CPU supports)
  std::string bf16_path;  // force one bfloat16 path (Context::bf16_paths(); "": the best)
  std::string window;     // "L" or "L,R": sliding window (Mask::window_left / right)
  double softcap = 0.0;   // logit soft-cap (Mask::softcap)
};

// The sliding window of --window: {left, right} (-1 = unbounded; "L" leaves right at -1).
std::pair<int64_t, int64_t> window_of(const Common& c);
// Sets the masks --window and --softcap ask for on a call's arguments.
void apply_masks(const Common& c, AttentionArgs& a);
// " window=(L,R) softcap=x" for the masks given ("" for none), after a row's mechanism.
std::string mask_text(const Common& c);
// meta["window"], meta["softcap"] when given.
void add_mask_meta(const Common& c, nlohmann::json& meta);

struct RunArgs {
  std::string mechanism = "softmax", q, k, v, out, memory, memory_out, gate, key_lengths;
  std::string layout = "bshd";  // how rank-3/4 .npy files are laid out: bshd or bhsd
};
int cmd_run(const Common& c, const RunArgs& r);

struct CompareArgs {
  Shape shape;
  std::vector<std::string> mechanisms;  // empty: all registered
  int warmup = 1, reps = 3;
  uint64_t seed = 0;
};
int cmd_compare(const Common& c, const CompareArgs& a);

struct BenchArgs {
  std::vector<std::string> mechanisms = {"softmax"};
  Shape shape;
  std::string seqs = "1024,2048,4096";
  int warmup = 2, reps = 10;
  bool decode = false;  // time one streaming step (append 1 + query 1) after seq tokens
  // q, k, v (and out, dout, the gradients) in this dtype: float32, bfloat16 or float16.
  std::string dtype = "float32";
  bool backward = false;  // time the backward pass (dq, dk, dv, dmemory) after one forward
};
int cmd_bench(const Common& c, const BenchArgs& a);

int cmd_list(const Common& c);

// The config text for `name` from every -c name:key=value,... given (joined; a key given
// twice is an Error). Every -c must name a mechanism in `used`.
std::string config_for(const Common& c, const std::string& name);
void check_configs(const Common& c, const std::vector<std::string>& used);
// The mechanism `name` with the common options and its -c config.
std::unique_ptr<Mechanism> make(const Common& c, const std::string& name);
// The thread count a Context(c.threads) would have, without starting one.
int threads_of(const Common& c);

}  // namespace attnkit::cli
