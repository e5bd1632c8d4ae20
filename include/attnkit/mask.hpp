// The masks of one attention call: which keys each query sees, and what is added to its
// logits. Names follow FlashAttention (flash_attn_func, flash_attn_varlen_func) and PyTorch
// SDPA. Which masks a mechanism honours is declared in its Capabilities::masks; any other
// given mask is an Error naming the mechanism and the mask, never ignored.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "attnkit/tensor.hpp"

namespace attnkit {

// Mask kinds, as bits of Capabilities::masks.
enum MaskKind : uint32_t {
  kMaskKeyRanges = 1u << 0,       // key_lengths (right padding), Mask::key_begin (left padding)
  kMaskQueryPositions = 1u << 1,  // Mask::query_positions
  kMaskVarlen = 1u << 2,          // Mask::cu_seqlens_q / cu_seqlens_k
  kMaskWindow = 1u << 3,          // Mask::window_left / window_right
  kMaskAlibi = 1u << 4,           // Mask::alibi_slopes
  kMaskSoftcap = 1u << 5,         // Mask::softcap
  kMaskAttnMask = 1u << 6,        // Mask::attn_mask
};
inline constexpr uint32_t kAllMasks = (1u << 7) - 1;
// The argument name of a mask kind ("window_size"), as errors and docs spell it.
std::string_view mask_name(MaskKind kind);

// Query row i of sequence b sits at key position p = query_positions[b] + i (default
// Sk - Sq: bottom-right aligned, as FlashAttention). It sees key j when
//   key_begin[b] <= j < key_lengths[b]             (padding; defaults 0 and Sk)
//   j <= p                                         (causal)
//   p - window_left <= j <= p + window_right       (sliding window; -1 = unbounded)
// and attn_mask[b, h, i, j] is true (bool). Its logit for a visible key is
//   x = scale q.k_j;  softcap > 0: x = softcap tanh(x / softcap);
//   x -= slope[b, h] |p - j| (ALiBi);  x += attn_mask[b, h, i, j] (additive float).
// A row with no visible key (or only -inf logits) gives out = 0 and lse = -inf.
struct Mask {
  std::span<const int32_t> key_begin;        // optional [B], in [0, Sk]: left padding
  std::span<const int32_t> query_positions;  // optional [B], in [0, 2^31): row 0's position
  // Packed variable-length batches (flash_attn_varlen_func): q is [1, total_q, Hq, Dk] and
  // k, v [1, total_k, Hk, D]; sequence s has query rows [cu_seqlens_q[s], cu_seqlens_q[s+1])
  // and key rows likewise. Both given or neither; n + 1 non-decreasing entries from 0 to the
  // total. Each sequence is attended alone (its causal alignment bottom-right).
  std::span<const int32_t> cu_seqlens_q;
  std::span<const int32_t> cu_seqlens_k;
  int64_t window_left = -1;   // keys at most this far before the query (-1: unbounded)
  int64_t window_right = -1;  // keys at most this far after it (-1: unbounded; causal caps it at 0)
  ConstTensorView alibi_slopes;  // optional [Hq] or [B, Hq] float32 (float64 for references)
  double softcap = 0.0;          // > 0: logits soft-capped (Gemma 2); 0: off
  // Optional [B|1, Hq|1, Sq, Sk] (dims of size 1 broadcast, or stride 0): bool (true =
  // attend, as SDPA) or additive float of the input dtype (-inf masks the key).
  ConstTensorView attn_mask;

  bool has_window() const { return window_left != -1 || window_right != -1; }
  bool varlen() const { return !cu_seqlens_q.empty() || !cu_seqlens_k.empty(); }
};

}  // namespace attnkit
