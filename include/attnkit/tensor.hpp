// Non-owning strided tensor views and a small owning buffer.
//
// Canonical attention layout is [batch, seq, heads, head_dim]. Strides are in
// elements; the last dimension must be contiguous (stride 1, checked at the API
// boundary), every other stride is free, so a PyTorch [B, H, N, D] tensor or a
// KV-cache slice is a view, not a copy.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include "attnkit/error.hpp"

namespace attnkit {

// kBool (one byte, 0 or 1) is only for masks (Mask::attn_mask). kBF16 and kF16 are the
// narrow dtypes: storage only, computed in float32.
enum class DType : uint8_t { kF32, kF64, kBF16, kBool, kF16 };

constexpr size_t dtype_size(DType t) {
  return t == DType::kF64 ? 8 : t == DType::kF32 ? 4 : t == DType::kBool ? 1 : 2;
}
constexpr const char* dtype_name(DType t) {
  return t == DType::kF64    ? "float64"
         : t == DType::kF32  ? "float32"
         : t == DType::kBF16 ? "bfloat16"
         : t == DType::kF16  ? "float16"
                             : "bool";
}
constexpr bool is_narrow(DType t) { return t == DType::kBF16 || t == DType::kF16; }

namespace detail {
inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
}  // namespace detail

// bfloat16 storage: the upper 16 bits of a float32. Kernels widen it on load.
struct bfloat16 {
  uint16_t bits = 0;
};
inline float to_float(bfloat16 x) {
  return detail::bits_to_float(static_cast<uint32_t>(x.bits) << 16);
}
// Round to nearest even (NaN stays NaN).
inline bfloat16 to_bfloat16(float f) {
  uint32_t u = detail::float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}

// IEEE binary16 storage (1 sign, 5 exponent, 10 mantissa bits; largest finite 65504).
struct float16 {
  uint16_t bits = 0;
};
// Exact (every binary16 value is a float32). The exponent is rebased by one multiply, and
// subnormals come out of a float subtraction (Maratyszcza's FP16 conversions).
inline float to_float(float16 h) {
  const uint32_t w = static_cast<uint32_t>(h.bits) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normal = detail::bits_to_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = detail::bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f;
  return detail::bits_to_float(sign |
                               detail::float_to_bits(two_w < (1u << 27) ? subnormal : normal));
}
// Round to nearest even; beyond 65520 (the rounding midpoint past 65504) gives +-Inf, NaN
// stays NaN. The float arithmetic does the rounding: scaling by 2^112 then 2^-110 overflows
// what binary16 cannot hold and leaves the rest rounded at binary16's ulp once the bias is added.
inline float16 to_float16(float f) {
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = detail::float_to_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = detail::bits_to_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = detail::float_to_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return {static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
}

// f rounded to the bits of narrow dtype t (bfloat16 or float16), and such bits widened.
inline uint16_t to_narrow_bits(float f, DType t) {
  return t == DType::kBF16 ? to_bfloat16(f).bits : to_float16(f).bits;
}
inline float from_narrow_bits(uint16_t bits, DType t) {
  return t == DType::kBF16 ? to_float(bfloat16{bits}) : to_float(float16{bits});
}

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::kF32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::kF64;
}
template <>
constexpr DType dtype_of<bfloat16>() {
  return DType::kBF16;
}
template <>
constexpr DType dtype_of<float16>() {
  return DType::kF16;
}

inline constexpr int kMaxRank = 4;

// Pointer + dtype + shape + strides (elements). Rank 0 with data == nullptr
// means "absent" for optional arguments.
template <typename VoidPtr>
struct BasicView {
  VoidPtr data = nullptr;
  DType dtype = DType::kF32;
  int rank = 0;
  std::array<int64_t, kMaxRank> shape{};
  std::array<int64_t, kMaxRank> stride{};

  BasicView() = default;
  // A mutable view converts to a const one.
  template <typename P>
  requires(std::is_same_v<VoidPtr, const void*>&& std::is_same_v<P, void*>)
      BasicView(const BasicView<P>& o)  // NOLINT(google-explicit-constructor)
      : data(o.data), dtype(o.dtype), rank(o.rank), shape(o.shape), stride(o.stride) {}

  bool present() const { return data != nullptr || rank != 0; }
  // Element offset of a full index (rank entries used).
  int64_t offset(int64_t i0, int64_t i1 = 0, int64_t i2 = 0, int64_t i3 = 0) const {
    return i0 * stride[0] + i1 * stride[1] + i2 * stride[2] + i3 * stride[3];
  }
  // Typed access; the caller has validated dtype.
  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
  template <typename T>
  T& at(int64_t i0, int64_t i1 = 0, int64_t i2 = 0, int64_t i3 = 0) const {
    return ptr<T>()[offset(i0, i1, i2, i3)];
  }
  // Address of the row at [i0, i1, i2], for any dtype.
  const void* row_address(int64_t i0, int64_t i1, int64_t i2) const {
    return static_cast<const char*>(data) + (i0 * stride[0] + i1 * stride[1] + i2 * stride[2]) *
                                                static_cast<int64_t>(dtype_size(dtype));
  }
  // Pointer to the contiguous last-dimension row at [i0, i1, i2].
  template <typename T>
  T* row(int64_t i0, int64_t i1, int64_t i2) const {
    return ptr<T>() + i0 * stride[0] + i1 * stride[1] + i2 * stride[2];
  }
};

using TensorView = BasicView<void*>;
using ConstTensorView = BasicView<const void*>;

inline ConstTensorView as_const(const TensorView& v) {
  ConstTensorView c;
  c.data = v.data;
  c.dtype = v.dtype;
  c.rank = v.rank;
  c.shape = v.shape;
  c.stride = v.stride;
  return c;
}

// Row-major contiguous strides for a shape.
inline std::array<int64_t, kMaxRank> contiguous_strides(std::initializer_list<int64_t> shape) {
  std::array<int64_t, kMaxRank> s{};
  int64_t acc = 1;
  int i = static_cast<int>(shape.size());
  for (auto it = std::rbegin(shape); it != std::rend(shape); ++it) {
    s[--i] = acc;
    acc *= *it;
  }
  return s;
}

// A contiguous view of data; const data gives a ConstTensorView.
template <typename T>
std::conditional_t<std::is_const_v<T>, ConstTensorView, TensorView> make_view(
    T* data, std::initializer_list<int64_t> shape) {
  std::conditional_t<std::is_const_v<T>, ConstTensorView, TensorView> v;
  v.data = data;
  v.dtype = dtype_of<std::remove_const_t<T>>();
  v.rank = static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) v.shape[i++] = s;
  v.stride = contiguous_strides(shape);
  return v;
}

// Owning, contiguous, row-major buffer: for tests, the CLI and examples.
template <typename T>
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::initializer_list<int64_t> shape) : Tensor(std::vector<int64_t>(shape)) {}
  // Throws Error("tensor") for a negative size or 2^40 elements or more (checked before the
  // product could overflow), and std::bad_alloc when the memory cannot be had.
  Tensor(const std::vector<int64_t>& shape) : shape_(shape) {  // NOLINT
    constexpr int64_t kMax = int64_t{1} << 40;
    int64_t n = 1;
    for (int64_t s : shape) {
      if (s < 0) throw Error("tensor", "sizes must be >= 0, got " + std::to_string(s));
      if (s > 0 && n > (kMax - 1) / s) throw Error("tensor", "must have fewer than 2^40 elements");
      n *= s;
    }
    data_.assign(static_cast<size_t>(n), T{});
  }
  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  size_t size() const { return data_.size(); }
  const std::vector<int64_t>& shape() const { return shape_; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }
  std::vector<T>& vec() { return data_; }
  const std::vector<T>& vec() const { return data_; }

  TensorView view() {
    TensorView v;
    v.data = data_.data();
    v.dtype = dtype_of<T>();
    v.rank = static_cast<int>(shape_.size());
    int64_t acc = 1;
    for (int i = v.rank - 1; i >= 0; --i) {
      v.shape[i] = shape_[i];
      v.stride[i] = acc;
      acc *= shape_[i];
    }
    return v;
  }
  ConstTensorView view() const { return as_const(const_cast<Tensor*>(this)->view()); }
  ConstTensorView cview() const { return view(); }

 private:
  std::vector<int64_t> shape_;
  std::vector<T> data_;
};

std::string shape_string(const ConstTensorView& v);
inline std::string shape_string(const TensorView& v) { return shape_string(as_const(v)); }

}  // namespace attnkit
