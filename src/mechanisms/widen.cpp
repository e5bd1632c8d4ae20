#include "src/mechanisms/widen.hpp"

#include <hwy/aligned_allocator.h>

#include <string>

#include "attnkit/error.hpp"
#include "src/cpu/kernels.hpp"

namespace attnkit::detail {

void Widened::Buffer::Free::operator()(float* p) const { hwy::FreeAlignedBytes(p, nullptr, nullptr); }

TensorView Widened::allocate(const ConstTensorView& like, std::string_view name) {
  int64_t n = 1;
  for (int i = 0; i < like.rank; ++i) n *= like.shape[i];
  auto* p = static_cast<float*>(
      hwy::AllocateAlignedBytes(static_cast<size_t>(n > 0 ? n : 1) * sizeof(float), nullptr,
                                nullptr));
  if (p == nullptr) {
    throw OutOfMemory(std::string(name) + ": cannot allocate its float32 copy (" +
                      std::to_string(n) + " floats)");
  }
  buffers_.push_back({std::unique_ptr<float, Buffer::Free>(p), TensorView{}});
  TensorView v;
  v.data = p;
  v.dtype = DType::kF32;
  v.rank = like.rank;
  v.shape = like.shape;
  int64_t acc = 1;
  for (int i = like.rank - 1; i >= 0; --i) {
    v.stride[i] = acc;
    acc *= like.shape[i];
  }
  return v;
}

TensorView Widened::input(const TensorView& t, std::string_view name) {
  if (!t.present() || !is_narrow(t.dtype)) return t;
  const TensorView copy = allocate(as_const(t), name);
  cpu::widen(as_const(t), copy.ptr<float>(), ctx_);
  return copy;
}

ConstTensorView Widened::input(const ConstTensorView& t, std::string_view name) {
  if (!t.present() || !is_narrow(t.dtype)) return t;
  const TensorView copy = allocate(t, name);
  cpu::widen(t, copy.ptr<float>(), ctx_);
  return as_const(copy);
}

TensorView Widened::output(const TensorView& t, std::string_view name) {
  if (!t.present() || !is_narrow(t.dtype)) return t;
  const TensorView stand_in = allocate(as_const(t), name);
  buffers_.back().dst = t;
  return stand_in;
}

void Widened::finish() {
  for (const Buffer& b : buffers_) {
    if (b.dst.present()) cpu::narrow(b.data.get(), b.dst, ctx_);
  }
}

}  // namespace attnkit::detail
