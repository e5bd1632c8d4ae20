// Options shared by every mechanism, and one config struct per mechanism.
// Defaults follow the papers (see docs/MECHANISMS.md and ../shared/SPEC.md).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace attnkit {

struct AttentionOptions {
  double scale = 0.0;   // logit scale; 0 means 1/sqrt(head_dim)
  bool causal = false;  // query i sees keys j <= i + (Sk - Sq) (bottom-right aligned)
};
std::string to_string(const AttentionOptions& o);

// Feature map phi applied to queries and keys by the linear family.
enum class FeatureMap { kIdentity, kEluPlusOne, kRelu, kExp };
// Normaliser of linear attention. kNone: the paper's r = (sum_t phi(k_t) v_t^T)^T phi(q).
// kLength: divide by the number of attended tokens T. kFixed1000: the author code's
// 1000 / T. kKernel: divide by phi(q) . sum_t phi(k_t) (Katharopoulos et al.).
enum class LinearNorm { kNone, kLength, kFixed1000, kKernel };

struct LinearConfig {
  FeatureMap map = FeatureMap::kIdentity;
  LinearNorm norm = LinearNorm::kNone;
  // Gated variant: token t contributes with weight u_t^2, u_t = sigmoid(gate[b, t, h]),
  // the paper's h_t <- u_t h_t applied to key and value. Needs AttentionArgs::gate.
  bool gated = false;
  int chunk = 64;  // causal prefill chunk length (fast kernel only)
};

struct RfaConfig {
  int features = 64;       // random features S per head
  bool orthogonal = true;  // block-orthogonal draws (Performer FAVOR+)
  uint64_t seed = 0;
};

// Randomized Attention, the unbiased paper form (SPEC 2(a)).
struct RaConfig {
  int samples = 1;  // Monte-Carlo samples per query
  uint64_t seed = 0;
};

enum class LaraMis { kOpt, kBiased, kBalance };
struct LaraConfig {
  int landmarks = 16;           // C, segment-mean proposals (1-D)
  LaraMis mis = LaraMis::kOpt;  // multiple-importance-sampling weights
  double alpha = 1.0;
  bool sample = false;  // false: omega_c = mu_c (deterministic, eval mode)
  uint64_t seed = 0;
};

struct TopkConfig {
  int k = 32;            // keys kept per query
  int query_chunk = 32;  // queries scored together by one task (query_chunk x Sk scores)
};

enum class MemoryFilter { kConv, kMaxPool };
// Chunk-wise memory-augmented attention (RMT recurrence) with the filtered
// memory interface of arXiv 2404.00798.
struct MemoryConfig {
  int chunk = 128;  // tokens per chunk
  int width = 1;    // kappa; 1 = no filtering
  MemoryFilter filter_type = MemoryFilter::kConv;
  double temperature = 0.0;  // memory-write logit divisor; 0 means sqrt(d)
};

// One config key of a mechanism, as its factory reads it: the single source for parsing,
// `attnkit list`, Python docstrings and docs.
struct ConfigKey {
  std::string key;
  std::string type;           // "int", "float", "bool", "u64" or "choice"
  std::string default_value;  // as it would be written in a config string
  std::string allowed;        // "[1, 1024]", "identity|elu1|relu|exp", ...
  std::string help;           // what it means
  std::string value;          // the value a parse resolved (the given one, else the default)
};

// "key=value,key=value" (commas or spaces). Each factory takes the keys it knows
// and rejects the rest with an Error naming them. Every get_* also records the key (type,
// default, allowed values, help) in keys(), so parsing "" lists a mechanism's config.
class KeyValues {
 public:
  KeyValues() = default;
  static KeyValues parse(std::string_view text);

  int get_int(std::string_view key, int def, int min, int max, std::string_view help);
  double get_double(std::string_view key, double def, double min, double max,
                    std::string_view help);
  bool get_bool(std::string_view key, bool def, std::string_view help);
  uint64_t get_u64(std::string_view key, uint64_t def, std::string_view help);
  // One of `choices`; returns its index.
  int get_choice(std::string_view key, int def, std::span<const std::string_view> choices,
                 std::string_view help);
  // Throws Error("config", ...) naming any key not consumed by a get_*.
  void expect_consumed(std::string_view mechanism) const;
  const std::vector<ConfigKey>& keys() const { return keys_; }

 private:
  std::map<std::string, std::string, std::less<>> kv_;
  std::vector<std::string> consumed_;
  std::vector<ConfigKey> keys_;
  const std::string* take(std::string_view key);
};

}  // namespace attnkit
