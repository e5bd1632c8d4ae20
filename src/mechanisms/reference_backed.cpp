#include "src/mechanisms/reference_backed.hpp"

namespace attnkit::detail {
namespace {

// Calls fn(flat index, element offset) over every element of a rank <= 4 view.
template <typename Fn>
void for_each_offset(const BasicView<const void*>& t, Fn&& fn) {
  int64_t shape[4] = {1, 1, 1, 1}, stride[4] = {0, 0, 0, 0};
  for (int i = 0; i < t.rank; ++i) {
    shape[4 - t.rank + i] = t.shape[i];
    stride[4 - t.rank + i] = t.stride[i];
  }
  int64_t flat = 0;
  for (int64_t a = 0; a < shape[0]; ++a)
    for (int64_t b = 0; b < shape[1]; ++b)
      for (int64_t c = 0; c < shape[2]; ++c)
        for (int64_t d = 0; d < shape[3]; ++d)
          fn(flat++, a * stride[0] + b * stride[1] + c * stride[2] + d * stride[3]);
}

std::vector<int64_t> shape_of(const ConstTensorView& t) {
  return std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.rank);
}

}  // namespace

Tensor<double> widen(const ConstTensorView& t) {
  Tensor<double> out(shape_of(t));
  if (t.dtype == DType::kF64) {
    for_each_offset(t, [&](int64_t i, int64_t off) { out[i] = t.ptr<const double>()[off]; });
  } else {
    for_each_offset(t, [&](int64_t i, int64_t off) { out[i] = t.ptr<const float>()[off]; });
  }
  return out;
}

void narrow(const Tensor<double>& src, const TensorView& dst) {
  for_each_offset(as_const(dst), [&](int64_t i, int64_t off) {
    dst.ptr<float>()[off] = static_cast<float>(src[i]);
  });
}

void run_reference(const AttentionArgs& a, const std::function<void(const AttentionArgs&)>& ref) {
  if (a.q.dtype == DType::kF64) {
    ref(a);
    return;
  }
  Tensor<double> q = widen(a.q), k = widen(a.k), v = widen(a.v);
  Tensor<double> out(shape_of(as_const(a.out)));
  Tensor<double> memory, memory_out, gate, filter;
  AttentionArgs w;
  w.q = q.view();
  w.k = k.view();
  w.v = v.view();
  w.out = out.view();
  w.key_lengths = a.key_lengths;
  if (a.memory.present()) w.memory = (memory = widen(a.memory)).view();
  if (a.memory_out.present()) {
    memory_out = Tensor<double>(shape_of(as_const(a.memory_out)));
    w.memory_out = memory_out.view();
  }
  if (a.gate.present()) w.gate = (gate = widen(a.gate)).view();
  if (a.filter.present()) w.filter = (filter = widen(a.filter)).view();
  ref(w);
  narrow(out, a.out);
  if (a.memory_out.present()) narrow(memory_out, a.memory_out);
}

}  // namespace attnkit::detail
