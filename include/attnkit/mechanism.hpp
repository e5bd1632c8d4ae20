// The Mechanism interface, streaming states and the registry.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "attnkit/args.hpp"
#include "attnkit/context.hpp"
#include "attnkit/options.hpp"
#include "attnkit/problem.hpp"
#include "attnkit/tensor.hpp"

namespace attnkit {

// What a mechanism supports beyond its non-causal float32/float64 forward (which all have,
// float32 on a fast kernel).
// The optional arguments a mechanism reads are declared here; the base class refuses the
// others ("gate: is not used by topk") before the mechanism's own validation runs.
struct Capabilities {
  bool causal = false;
  bool streaming = false;
  bool kv_cache = false;  // its stream keeps every token (state grows with the length)
  bool backward = false;
  bool needs_memory = false;  // AttentionArgs::memory is required (and memory_out allowed)
  bool uses_gate = false;     // AttentionArgs::gate (linear gated=1)
  bool uses_filter = false;   // AttentionArgs::filter (memory filter_type=conv)
  bool emits_lse = false;     // AttentionArgs::lse (softmax)
  bool bfloat16 = false;      // bfloat16 q, k, v forward (float32 out)
  // bfloat16 backward: q, k, v, out, dout and the gradients all bfloat16 (float32 inside).
  bool bfloat16_backward = false;
  // Its bfloat16 forward takes Context::bf16_path() (AMX tiles, AVX512-BF16 dots); else it
  // widens bfloat16 inputs to float32 on load.
  bool bf16_path = false;
  // The masks its math admits (MaskKind bits). Every mechanism takes right padding
  // (key_lengths) natively, and causal when `causal` says so. The base class runs packed batches
  // (varlen) as one call per sequence, and, for a mechanism without kMaskQueryPositions, left
  // padding as one call per batch row on its keys [key_begin, Sk): so the padding tokens do not
  // exist for it, and a left-padded row equals the unpadded run.
  uint32_t masks = kMaskKeyRanges | kMaskVarlen;
  // Queries and keys are positions of one sequence whose query rows are pooled (memory's
  // chunks, lara's landmarks): left padding drops the query rows before the first valid
  // key's position too (they give zeros), in causal and non-causal mode alike.
  bool aligned = false;
};

// What a stream is created for.
struct StreamSpec {
  int64_t batch = 1;
  int64_t heads = 1;       // query heads
  int64_t kv_heads = 1;    // key/value heads
  int64_t head_dim = 0;    // Dk
  int64_t value_dim = 0;   // Dv
  int64_t max_tokens = 0;  // capacity hint for growing states (KV cache); 0: grow as needed
  ConstTensorView memory;  // [B, L, Hq, Dk] float32 for mechanisms that need memory (copied)
  ConstTensorView filter;  // [Hk, width] float32 memory-write filter weights (memory; copied)
  // >= 0: sliding window (softmax, topk): a query sees the last window + 1 appended tokens, kept in
  // a fixed ring buffer, so a decode step at any length equals the last row of a causal
  // forward with Mask::window_left = window. -1: every appended token.
  int64_t window = -1;
  // Logit masks of a softmax or topk stream, as Mask's: softcap > 0 caps the logits; alibi_slopes
  // ([Hq] or [B, Hq] float32, copied) subtracts slope |p_q - p_k| with the query rows of a
  // query() call at the last positions (Tq rows: positions length - Tq .. length - 1; each
  // sees every cached token). A decode step (one row) equals the last row of a causal forward
  // with the same masks. ALiBi needs every token's position, so no window's ring with it.
  double softcap = 0.0;
  ConstTensorView alibi_slopes;
};

// Incremental attention: append key/value tokens, query against all appended.
// A fixed-size state (linear families) keeps state_bytes() constant.
class StreamingState {
 public:
  virtual ~StreamingState() = default;
  // k: [B, T, Hk, Dk], v: [B, T, Hk, Dv] float32.
  virtual void append(const ConstTensorView& k, const ConstTensorView& v, Context& ctx) = 0;
  // Gated mechanisms (linear gated=1): k, v as append's, gate [B, T, Hk] float32 logits, one
  // per token and kv head. Streams of ungated mechanisms refuse it (Error "gate").
  virtual void append_gated(const ConstTensorView& k, const ConstTensorView& v,
                            const ConstTensorView& gate, Context& ctx);
  // q: [B, Tq, Hq, Dk] -> out: [B, Tq, Hq, Dv]; every query sees every appended token.
  virtual void query(const ConstTensorView& q, const TensorView& out, Context& ctx) = 0;
  virtual size_t state_bytes() const = 0;
  virtual int64_t length() const = 0;  // tokens appended
};

class Mechanism;
std::unique_ptr<Mechanism> make_mechanism(std::string_view name, const AttentionOptions& options,
                                          std::string_view config);

class Mechanism {
 public:
  explicit Mechanism(AttentionOptions options) : options_(options) {}
  virtual ~Mechanism() = default;

  virtual std::string_view name() const = 0;
  virtual Capabilities capabilities() const = 0;
  // Name, config and options, e.g. "topk(k=32,query_chunk=32) causal": every config key
  // the factory read, with the value it resolved (so the text cannot drift from the config).
  std::string describe() const;
  const AttentionOptions& options() const { return options_; }
  // The config keys with their resolved values (ConfigKey::value), as make_mechanism parsed.
  const std::vector<ConfigKey>& config() const { return config_; }

  // Empty when args are valid, else the reason ("k: heads (3) must divide q heads (8)").
  std::string check(const AttentionArgs& args) const;
  // As check, but args.out (and memory_out, lse) may be absent: every rule on shapes,
  // strides, dtypes and options, checked before the caller allocates outputs sized from the
  // inputs (a 4 TiB out is never allocated for an input that breaks a rule). The value scans
  // (NaN/Inf, magnitude limits) are left to forward, so a checked call reads its inputs once.
  std::string check_inputs(const AttentionArgs& args) const;
  // check_inputs that throws the Error instead of returning its text.
  void validate_inputs(const AttentionArgs& args) const;
  // The resolved problem of validated args (sizes, scale, causal, masks): what run gets.
  Problem problem(const AttentionArgs& args) const { return Problem::resolve(args, options_); }
  // Validates (throws Error) then computes out (and lse / memory_out when asked). Finite
  // inputs whose arithmetic overflows the dtype (a non-finite out) throw Error("out"), never
  // return NaN or Inf.
  void forward(const AttentionArgs& args, Context& ctx) const;
  // A streaming state; throws Error when the mechanism has no streaming form.
  virtual std::unique_ptr<StreamingState> new_stream(const StreamSpec& spec) const;
  // Validates, then writes dq, dk, dv (overwritten, not accumulated); throws Error when
  // the mechanism has no backward pass yet, or when a gradient overflows as forward's out.
  void backward(const BackwardArgs& args, Context& ctx) const;

 protected:
  virtual void validate(const AttentionArgs& args) const = 0;  // throws Error
  // Compute out (lse, memory_out) of validated args with p = problem(args): float64 views run
  // the double-precision reference (src/reference/, from SPEC.md), other dtypes the fast
  // kernel; the base class dispatches. Neither sees a packed batch, nor (unless masks has
  // kMaskQueryPositions) left padding.
  virtual void run_reference(const AttentionArgs& args, const Problem& p) const = 0;
  virtual void run_kernel(const AttentionArgs& args, const Problem& p, Context& ctx) const = 0;
  // Validates backward's arguments (throws Error); the default says there is no backward.
  virtual void validate_backward(const BackwardArgs& args) const;
  // The gradients of validated args, split and dispatched as forward's; the defaults say
  // there is no backward pass.
  virtual void backward_reference(const BackwardArgs& args, const Problem& p) const;
  virtual void backward_kernel(const BackwardArgs& args, const Problem& p, Context& ctx) const;

 private:
  friend std::unique_ptr<Mechanism> make_mechanism(std::string_view, const AttentionOptions&,
                                                   std::string_view);
  // Refuses optional arguments the capabilities do not declare.
  void check_declared(const AttentionArgs& args) const;
  // check_declared, then validate(), then the masks (src/mechanisms/masks.cpp).
  void validate_all(const AttentionArgs& args) const;
  // Refuses masks the capabilities do not admit, then checks each given mask's rules.
  void check_masks(const AttentionArgs& args) const;
  // run / run_backward on each sub-problem a packed batch or left padding splits into.
  void run_split(const AttentionArgs& args, Context& ctx) const;
  void run_backward_split(const BackwardArgs& args, Context& ctx) const;
  // float64: the reference; other dtypes: the kernel.
  void run(const AttentionArgs& args, const Problem& p, Context& ctx) const;
  void run_backward(const BackwardArgs& args, const Problem& p, Context& ctx) const;
  AttentionOptions options_;
  std::vector<ConfigKey> config_;
};

// Top-k feed-forward (Gupta et al. 2021, a feed-forward layer read as attention):
// out[t] = sum over the k largest x_t . keys_j of relu(x_t . keys_j) values_j.
// x: [T, Dm], keys: [F, Dm] (rows of W_in), values: [F, Dout] (rows of W_out^T),
// out: [T, Dout]; rank 2, rows contiguous, all float32 (fast) or all float64 (reference).
// k >= F is the dense ReLU feed-forward.
void topk_feed_forward(const ConstTensorView& x, const ConstTensorView& keys,
                       const ConstTensorView& values, const TensorView& out, int k, Context& ctx);

// Registry: the one place that lists every mechanism.
std::vector<std::string> mechanism_names();
// The config keys a mechanism's factory reads, with defaults, allowed values and meaning
// (recorded by the parser itself, so this list cannot drift from what is accepted).
std::vector<ConfigKey> config_keys(std::string_view name);
// config: "key=value,..." parsed by the mechanism's factory; unknown keys are errors.
std::unique_ptr<Mechanism> make_mechanism(std::string_view name,
                                          const AttentionOptions& options = {},
                                          std::string_view config = "");

}  // namespace attnkit
