// Boundary validation shared by every mechanism: shapes, strides, dtypes, sizes,
// finiteness. Every failure throws Error naming the argument and the rule.
#pragma once

#include <cmath>
#include <memory>
#include <string_view>

#include "attnkit/error.hpp"
#include "attnkit/mechanism.hpp"

namespace attnkit::detail {

struct Shape {
  int64_t B, Sq, Sk, Hq, Hk, Dk, Dv;
};

inline constexpr int64_t kMaxDim = int64_t{1} << 31;
inline constexpr int64_t kMaxHeadDim = 1024;
inline constexpr double kMaxStreamElements = 1099511627776.0;  // 2^40 floats in a stream state

// The dtype of q, k and v: float64 (the references), float32 (the fast kernels), or bfloat16
// / float16 (narrow: a mechanism without a kernel for them computes on float32 copies, see
// Mechanism::run). Anything else reads as float32, so check_qkv names q's dtype.
inline DType input_dtype(const AttentionArgs& a) {
  if (!a.q.present()) return DType::kF32;
  const DType t = a.q.dtype;
  return t == DType::kF64 || is_narrow(t) ? t : DType::kF32;
}
// The dtype the arithmetic runs in, and of the float arguments besides q, k, v, out and
// their gradients (gate, memory, filter, lse, bias masks): float64 for float64, else float32.
inline DType compute_dtype(DType in) { return in == DType::kF64 ? DType::kF64 : DType::kF32; }

// The logit scale: options.scale, or 1/sqrt(head_dim) when it is 0.
inline float logit_scale(const AttentionOptions& o, int64_t head_dim) {
  return static_cast<float>(o.scale != 0.0 ? o.scale
                                           : 1.0 / std::sqrt(static_cast<double>(head_dim)));
}

// While one is alive on this thread (Mechanism::check_inputs), check_qkv accepts an absent
// out and the value scans (check_finite, a mechanism's magnitude limits) are skipped: forward
// runs them, and a caller that checks first would otherwise read every input twice.
class InputsOnly {
 public:
  InputsOnly();
  ~InputsOnly();
  InputsOnly(const InputsOnly&) = delete;
  InputsOnly& operator=(const InputsOnly&) = delete;
  static bool active();
};

// While one is alive on this thread, the value scans of large tensors (check_finite,
// check_result) split across ctx's threads: they are memory-bound, and one thread reading q,
// k, v and out took ~15% of a causal linear-attention call (N=4k, 2 threads). Only around
// validation, never around a kernel: ctx.parallel_for is not reentrant.
class ScanThreads {
 public:
  explicit ScanThreads(Context& ctx);
  ~ScanThreads();
  ScanThreads(const ScanThreads&) = delete;
  ScanThreads& operator=(const ScanThreads&) = delete;
  static Context* current();

 private:
  Context* previous_;
};

// Present, given rank and dtype, sizes in range, last dim contiguous, strides >= 0.
void check_tensor(const ConstTensorView& t, std::string_view name, int rank, DType dtype);
// No NaN or Inf anywhere in t.
void check_finite(const ConstTensorView& t, std::string_view name);
// q, k, v, out (+ lse, key_lengths) of an attention call; returns the sizes. out has q's
// dtype, or float32 for narrow inputs (a caller that wants the unrounded result).
Shape check_qkv(const AttentionArgs& a, DType dtype);
// Throws when an optional argument the mechanism does not use was given.
void check_unused(const AttentionArgs& a, std::string_view mechanism, bool memory, bool gate,
                  bool filter, bool lse);
// memory [B, L >= 1, Hq, Dk] and optional memory_out (same shape); Dk == Dv since memory
// rows serve as keys and values (luna, memory).
void check_memory_args(const AttentionArgs& a, const Shape& sh, DType dtype);
// dout like out, dq like q, dk like k, dv like v (all of dtype, narrow ones too); gradients must
// not overlap the inputs or each other.
void check_backward(const BackwardArgs& g, DType dtype);
// Streaming: the spec, appended k [B, T, Hk, Dk] / v [B, T, Hk, Dv], and queries
// q [B, Tq, Hq, Dk] with out [B, Tq, Hq, Dv] (float32, finite).
// window_ok: a KV-cache stream (softmax, topk), which takes StreamSpec::window, softcap and
// alibi_slopes; others refuse them. filter_ok: memory's, which takes StreamSpec::filter.
void check_stream_spec(const StreamSpec& s, bool window_ok = false, bool filter_ok = false);
// Builds a stream's state; std::bad_alloc becomes OutOfMemory naming the stream.
template <typename Make>
auto make_state(Make&& make) {
  try {
    return make();
  } catch (const std::bad_alloc&) {
    throw OutOfMemory("stream: cannot allocate the state for this StreamSpec");
  }
}
void check_stream_append(const StreamSpec& s, const ConstTensorView& k, const ConstTensorView& v);
// StreamSpec::memory: [B, L >= 1, Hq, Dk] float32, finite.
void check_stream_memory(const StreamSpec& s);
// A stream's own contiguous copy of StreamSpec::memory, checked.
std::shared_ptr<Tensor<float>> copy_stream_memory(const StreamSpec& s);
// gate [B, T, Hk] float32 and finite, T = k's.
void check_stream_gate(const StreamSpec& s, const ConstTensorView& k, const ConstTensorView& gate);
void check_stream_query(const StreamSpec& s, const ConstTensorView& q, const TensorView& out);
// The gradient of a learnable input (dgate of gate, dmemory of memory, dfilter of filter):
// when present (or required), the input's rank and shape, dtype, and no memory shared with
// any input or other gradient of g.
void check_input_gradient(const BackwardArgs& g, const TensorView& grad, std::string_view name,
                          const ConstTensorView& input, std::string_view input_name, DType dtype,
                          bool required = false);
// A result (out, memory_out, a gradient) computed from finite inputs must be finite: a NaN
// or Inf there means the dtype's arithmetic overflowed, and throws Error(name) with the
// inputs' magnitudes instead of returning garbage.
void check_result(const ConstTensorView& t, std::string_view name, const AttentionArgs& a);
// Whether two views share a byte: exact (row intervals) up to 2^22 rows, so slots of one
// fused buffer are disjoint; beyond that, bounding boxes decide.
bool views_overlap(const ConstTensorView& a, const ConstTensorView& b);
// Whether two elements of t share memory (a stride-0 or interleaved output).
bool view_overlaps_itself(const ConstTensorView& t);
// An output must not overlap itself: Error(name) otherwise.
void check_no_self_overlap(const ConstTensorView& t, std::string_view name);
// out must not share memory with an input.
void check_no_overlap(const ConstTensorView& out, std::string_view out_name,
                      const ConstTensorView& in, std::string_view in_name);

}  // namespace attnkit::detail
