// Mask fixtures for tests: a MaskSpec owns the storage of every mask kind and sets
// AttentionArgs::mask in the dtype of the arguments (float32 or float64 slopes and
// additive masks), so one spec drives the kernel and the reference alike.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tests/testing/harness.hpp"

namespace attnkit::testing {

struct MaskSpec {
  std::string name;
  std::vector<int32_t> key_begin, key_lengths, query_positions;
  int64_t window_left = -1, window_right = -1;
  std::vector<double> alibi;  // [Hq] or [B, Hq] (alibi_batched)
  bool alibi_batched = false;
  double softcap = 0;
  // attn_mask [mb, mh, Sq, Sk] with mb in {1, B}, mh in {1, Hq}; bool or additive float.
  enum class AttnMask { kNone, kBool, kFloat } attn_mask = AttnMask::kNone;
  std::array<int64_t, 4> mask_shape{};
  std::vector<uint8_t> mask_bool;
  std::vector<double> mask_f64;

  // Copies of the float tensors in float32 (filled by apply for float32 args).
  mutable std::vector<float> alibi32, mask_f32;
  // Sets a.mask (and a.key_lengths when key_lengths is given) for a's dtype.
  void apply(AttentionArgs& a) const;
};

// A random attn_mask for d (broadcast over batch and/or heads as asked): bool with about
// 1 in 5 keys masked, or float with N(0, 1) values and about 1 in 6 at -inf.
void random_attn_mask(MaskSpec& m, const Dims& d, MaskSpec::AttnMask kind, bool per_batch,
                      bool per_head, uint32_t seed);

// The mask combinations the kernel checks sweep for d (each named): every kind alone and
// in combination with causal-friendly windows, padding on both sides, query positions,
// ALiBi per head and per batch, softcap and broadcast attn_masks.
std::vector<MaskSpec> mask_sweep(const Dims& d, bool causal);

}  // namespace attnkit::testing
