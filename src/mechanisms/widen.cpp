#include "src/mechanisms/widen.hpp"

#include "attnkit/error.hpp"
#include "src/cpu/kernels.hpp"

namespace attnkit::detail {
namespace {

int64_t numel(const ConstTensorView& t) {
  int64_t n = 1;
  for (int i = 0; i < t.rank; ++i) n *= t.shape[i];
  return n;
}
// Floats a copy of t takes in the room: its elements, rounded up to a cache line.
size_t room_for(const ConstTensorView& t) {
  if (!t.present() || !is_narrow(t.dtype)) return 0;
  return (static_cast<size_t>(numel(t)) + 15) & ~size_t{15};
}

}  // namespace

Widened::Widened(Context& ctx, std::initializer_list<ConstTensorView> views) : ctx_(ctx) {
  for (const ConstTensorView& t : views) size_ += room_for(t);
  if (size_ > 0) room_ = ctx.shared_scratch(size_, Context::kNarrowSlot);
}

TensorView Widened::allocate(const ConstTensorView& like) {
  const size_t n = room_for(like);
  if (used_ + n > size_)
    throw Error("internal", "Widened: a view was not given to the constructor");
  TensorView v;
  v.data = room_ + used_;
  used_ += n;
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

TensorView Widened::input(const TensorView& t) {
  if (!t.present() || !is_narrow(t.dtype)) return t;
  const TensorView copy = allocate(as_const(t));
  cpu::widen(as_const(t), copy.ptr<float>(), ctx_);
  return copy;
}

ConstTensorView Widened::input(const ConstTensorView& t) {
  if (!t.present() || !is_narrow(t.dtype)) return t;
  const TensorView copy = allocate(t);
  cpu::widen(t, copy.ptr<float>(), ctx_);
  return as_const(copy);
}

TensorView Widened::output(const TensorView& t) {
  if (!t.present() || !is_narrow(t.dtype)) return t;
  const TensorView stand_in = allocate(as_const(t));
  outputs_.push_back({stand_in.ptr<float>(), t});
  return stand_in;
}

void Widened::finish() {
  for (const Output& o : outputs_) cpu::narrow(o.data, o.dst, ctx_);
}

}  // namespace attnkit::detail
