// Narrow (bfloat16, float16) arguments of a kernel that computes in float32: float32 copies
// of the inputs, float32 stand-ins for the outputs, rounded back once at the end. This is how
// every mechanism takes narrow q, k, v (Mechanism::run, run_backward) except where it has a
// kernel of its own for them (Capabilities::bfloat16, bfloat16_backward).
#pragma once

#include <initializer_list>
#include <vector>

#include "attnkit/context.hpp"
#include "attnkit/tensor.hpp"

namespace attnkit::detail {

class Widened {
 public:
  // Room for the float32 copies of `views` (those not narrow take none): one buffer in ctx's
  // Context::kNarrowSlot, kept between calls (fresh pages for every call's copies measured as
  // much as the kernel of a causal linear call). input() and output() carve it, each of these
  // views at most once.
  Widened(Context& ctx, std::initializer_list<ConstTensorView> views);
  // t widened into a contiguous float32 copy (t itself when it is not narrow).
  ConstTensorView input(const ConstTensorView& t);
  // The same for an input held in a mutable view (the forward's out in a backward call).
  TensorView input(const TensorView& t);
  // A contiguous float32 buffer of t's shape standing in for narrow output t (t itself when it
  // is not narrow), rounded into t by finish().
  TensorView output(const TensorView& t);
  // Rounds every stand-in into its output.
  void finish();

 private:
  struct Output {
    const float* data;
    TensorView dst;  // the narrow output
  };
  TensorView allocate(const ConstTensorView& like);
  Context& ctx_;
  float* room_ = nullptr;
  size_t size_ = 0, used_ = 0;
  std::vector<Output> outputs_;
};

}  // namespace attnkit::detail
