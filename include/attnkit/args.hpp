// The arguments of one attention call and of its backward pass. Kernels and references
// include this header (and problem.hpp, the resolved call), not the Mechanism interface.
#pragma once

#include <cstdint>
#include <span>

#include "attnkit/mask.hpp"
#include "attnkit/tensor.hpp"

namespace attnkit {

// Arguments of one attention call. Shapes use B batch, Sq/Sk query/key length,
// Hq/Hk query/key heads (Hk divides Hq: GQA/MQA), Dk/Dv head dims.
struct AttentionArgs {
  ConstTensorView q;  // [B, Sq, Hq, Dk]
  ConstTensorView k;  // [B, Sk, Hk, Dk]
  ConstTensorView v;  // [B, Sk, Hk, Dv]
  TensorView out;     // [B, Sq, Hq, Dv]
  TensorView lse;     // optional [B, Hq, Sq] float32: log-sum-exp of scaled logits (softmax)
  std::span<const int32_t>
      key_lengths;         // optional, B entries in [0, Sk]: keys >= length are padding
  ConstTensorView memory;  // optional [B, L, Hq, Dk]: Luna / memory slots
  TensorView memory_out;   // optional [B, L, Hq, Dv]: packed / final memory
  ConstTensorView gate;    // optional [B, Sk, Hk]: gate logits (linear, gated=true)
  ConstTensorView filter;  // optional [Hk, kappa]: memory-write conv filter (memory)
  Mask mask;  // left padding, query positions, varlen, window, ALiBi, softcap, attn_mask
};

// Gradients of one attention call: the forward arguments, the upstream gradient dout, and
// the gradients to write. Shapes as in AttentionArgs.
struct BackwardArgs {
  AttentionArgs forward;  // q, k, v, out (the forward output), key_lengths
  ConstTensorView dout;   // [B, Sq, Hq, Dv]
  TensorView dq;          // [B, Sq, Hq, Dk]
  TensorView dk;          // [B, Sk, Hk, Dk]
  TensorView dv;          // [B, Sk, Hk, Dv]
  TensorView dgate;       // [B, Sk, Hk]: gradient of AttentionArgs::gate (linear, gated=true)
  TensorView dmemory;     // [B, L, Hq, Dk]: gradient of AttentionArgs::memory (luna, memory)
  TensorView dfilter;     // [Hk, kappa]: gradient of AttentionArgs::filter (memory, filter=conv)
};

}  // namespace attnkit
