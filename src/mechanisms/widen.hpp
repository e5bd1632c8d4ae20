// Narrow (bfloat16, float16) arguments of a kernel that computes in float32: float32 copies
// of the inputs, float32 stand-ins for the outputs, rounded back once at the end. This is how
// every mechanism takes narrow q, k, v (Mechanism::run, run_backward) except where it has a
// kernel of its own for them (Capabilities::bfloat16, bfloat16_backward).
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "attnkit/context.hpp"
#include "attnkit/tensor.hpp"

namespace attnkit::detail {

class Widened {
 public:
  explicit Widened(Context& ctx) : ctx_(ctx) {}
  // t widened into a contiguous float32 copy (t itself when it is not narrow). name: the
  // argument, for the OutOfMemory message.
  ConstTensorView input(const ConstTensorView& t, std::string_view name);
  // The same for an input held in a mutable view (the forward's out in a backward call).
  TensorView input(const TensorView& t, std::string_view name);
  // A contiguous float32 buffer of t's shape standing in for narrow output t (t itself when it
  // is not narrow), rounded into t by finish().
  TensorView output(const TensorView& t, std::string_view name);
  // Rounds every stand-in into its output.
  void finish();

 private:
  struct Buffer {
    struct Free {
      void operator()(float* p) const;
    };
    std::unique_ptr<float, Free> data;
    TensorView dst;  // the narrow output (absent for an input's copy)
  };
  TensorView allocate(const ConstTensorView& like, std::string_view name);
  Context& ctx_;
  std::vector<Buffer> buffers_;
};

}  // namespace attnkit::detail
