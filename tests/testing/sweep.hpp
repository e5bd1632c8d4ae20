// The shape sweep every fast kernel runs against its float64 reference: tile edges,
// head dims 16..128, Sq != Sk, GQA, padding, strided misaligned views, and 1/2/7 threads
// bitwise equal.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "tests/testing/harness.hpp"

namespace attnkit::testing {

using RefFn = std::function<void(const AttentionArgs&, const AttentionOptions&)>;

struct SweepOptions {
  double c = 64.0;             // error budget: c * eps(float) * max(|ref|, 1)
  bool causal = true;          // also sweep causal
  int64_t memory_len = 0;      // > 0: pass memory / memory_out of this length
  bool equal_lengths = false;  // Sq == Sk required (memory)
  bool equal_dims = false;     // Dk == Dv required (luna, memory)
};

void sweep_against_reference(const std::string& name, const std::string& config, const RefFn& ref,
                             const SweepOptions& o = {});

// Streaming == last row of the causal forward, token by token (mechanisms with streams).
void check_streaming_matches_causal(const std::string& name, const std::string& config, double tol,
                                    int64_t memory_len = 0);

// bfloat16 q, k, v (float32 out) against the float32 kernel on the same bf16-rounded
// values, causal and not, with and without a window and softcap, over shapes that end
// mid-tile and span several blocks, for each config: max |difference| <= tol + p_rounding *
// max |v| (0, 0: bit for bit). p_rounding is the relative rounding of the attention
// weights where P V runs in bfloat16 (2^-9: |sum (p~ - p) v| / l <= 2^-9 max |v|). Also
// checks that a bfloat16 out holds the float32 out rounded.
void check_bf16_matches_float32(const std::string& name, const std::vector<std::string>& configs,
                                float tol, double p_rounding = 0.0);

}  // namespace attnkit::testing
