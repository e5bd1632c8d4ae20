#include "src/mechanisms/validate.hpp"

#include <cmath>
#include <string>

namespace attnkit::detail {
namespace {

std::string s(int64_t x) { return std::to_string(x); }
const char* kDimNames[] = {"batch", "seq", "heads", "head_dim"};

inline double as_float(double x) { return x; }
inline float as_float(float x) { return x; }
inline float as_float(bfloat16 x) { return to_float(x); }

template <typename T>
bool all_finite(const ConstTensorView& t) {
  const T* base = t.ptr<const T>();
  const int64_t n3 = t.rank >= 1 ? t.shape[t.rank - 1] : 1;
  int64_t outer[3] = {1, 1, 1}, st[3] = {0, 0, 0};
  for (int i = 0; i + 1 < t.rank; ++i) {
    outer[3 - (t.rank - 1) + i] = t.shape[i];
    st[3 - (t.rank - 1) + i] = t.stride[i];
  }
  for (int64_t a = 0; a < outer[0]; ++a)
    for (int64_t b = 0; b < outer[1]; ++b)
      for (int64_t c = 0; c < outer[2]; ++c) {
        const T* p = base + a * st[0] + b * st[1] + c * st[2];
        bool ok = true;
        for (int64_t i = 0; i < n3; ++i) ok &= std::isfinite(as_float(p[i]));
        if (!ok) return false;
      }
  return true;
}

// [lowest, highest] byte address touched by a view (empty views: lo > hi).
std::pair<uintptr_t, uintptr_t> byte_range(const ConstTensorView& t) {
  uintptr_t lo = reinterpret_cast<uintptr_t>(t.data);
  uintptr_t hi = lo;
  for (int i = 0; i < t.rank; ++i) {
    if (t.shape[i] == 0) return {1, 0};
    hi += static_cast<uintptr_t>((t.shape[i] - 1) * t.stride[i]) * dtype_size(t.dtype);
  }
  return {lo, hi + dtype_size(t.dtype) - 1};
}

}  // namespace

void check_tensor(const ConstTensorView& t, std::string_view name, int rank, DType dtype) {
  const std::string n(name);
  if (!t.present()) throw Error(n, "is required");
  if (t.data == nullptr) throw Error(n, "data pointer is null");
  if (t.rank != rank) throw Error(n, "must have rank " + s(rank) + ", got " + s(t.rank));
  if (t.dtype != dtype) {
    throw Error(n, std::string("must be ") + dtype_name(dtype) + ", got " + dtype_name(t.dtype));
  }
  int64_t numel = 1;
  for (int i = 0; i < rank; ++i) {
    const std::string dim = rank == 4 ? kDimNames[i] : "dim " + s(i);
    if (t.shape[i] < 0) throw Error(n, dim + " (" + s(t.shape[i]) + ") must be >= 0");
    if (t.shape[i] >= kMaxDim) throw Error(n, dim + " (" + s(t.shape[i]) + ") must be < 2^31");
    if (t.stride[i] < 0)
      throw Error(n, "stride of " + dim + " (" + s(t.stride[i]) + ") must be >= 0");
    if (t.stride[i] >= (int64_t{1} << 40)) throw Error(n, "stride of " + dim + " must be < 2^40");
    numel *= std::max<int64_t>(t.shape[i], 1);
    if (numel >= (int64_t{1} << 40)) throw Error(n, "must have fewer than 2^40 elements");
  }
  if (t.stride[rank - 1] != 1 && t.shape[rank - 1] > 1) {
    throw Error(
        n, "last dimension must be contiguous (stride 1), got stride " + s(t.stride[rank - 1]));
  }
}

void check_finite(const ConstTensorView& t, std::string_view name) {
  const bool ok = t.dtype == DType::kF64    ? all_finite<double>(t)
                  : t.dtype == DType::kBF16 ? all_finite<bfloat16>(t)
                                            : all_finite<float>(t);
  if (!ok) throw Error(std::string(name), "must be finite (found NaN or Inf)");
}

void check_no_overlap(const ConstTensorView& out, std::string_view out_name,
                      const ConstTensorView& in, std::string_view in_name) {
  const auto [a0, a1] = byte_range(out);
  const auto [b0, b1] = byte_range(in);
  if (a0 <= a1 && b0 <= b1 && a0 <= b1 && b0 <= a1) {
    throw Error(std::string(out_name), "must not overlap " + std::string(in_name));
  }
}

Shape check_qkv(const AttentionArgs& a, DType dtype, DType out_dtype) {
  check_tensor(a.q, "q", 4, dtype);
  check_tensor(a.k, "k", 4, dtype);
  check_tensor(a.v, "v", 4, dtype);
  check_tensor(as_const(a.out), "out", 4, out_dtype);
  Shape sh{a.q.shape[0], a.q.shape[1], a.k.shape[1], a.q.shape[2],
           a.k.shape[2], a.q.shape[3], a.v.shape[3]};
  if (sh.B < 1) throw Error("q", "batch must be >= 1");
  if (sh.Hq < 1) throw Error("q", "heads must be >= 1");
  if (sh.Hk < 1) throw Error("k", "heads must be >= 1");
  if (sh.Dk < 1) throw Error("q", "head_dim must be >= 1");
  if (sh.Dv < 1) throw Error("v", "head_dim must be >= 1");
  if (sh.Dk > kMaxHeadDim)
    throw Error("q", "head_dim (" + s(sh.Dk) + ") must be <= " + s(kMaxHeadDim));
  if (sh.Dv > kMaxHeadDim)
    throw Error("v", "head_dim (" + s(sh.Dv) + ") must be <= " + s(kMaxHeadDim));
  if (a.k.shape[0] != sh.B)
    throw Error("k", "batch (" + s(a.k.shape[0]) + ") must equal q batch (" + s(sh.B) + ")");
  if (a.v.shape[0] != sh.B)
    throw Error("v", "batch (" + s(a.v.shape[0]) + ") must equal q batch (" + s(sh.B) + ")");
  if (sh.Hq % sh.Hk != 0)
    throw Error("k", "heads (" + s(sh.Hk) + ") must divide q heads (" + s(sh.Hq) + ")");
  if (a.k.shape[3] != sh.Dk)
    throw Error("k", "head_dim (" + s(a.k.shape[3]) + ") must equal q head_dim (" + s(sh.Dk) + ")");
  if (a.v.shape[1] != sh.Sk)
    throw Error("v", "seq (" + s(a.v.shape[1]) + ") must equal k seq (" + s(sh.Sk) + ")");
  if (a.v.shape[2] != sh.Hk)
    throw Error("v", "heads (" + s(a.v.shape[2]) + ") must equal k heads (" + s(sh.Hk) + ")");
  const int64_t want[4] = {sh.B, sh.Sq, sh.Hq, sh.Dv};
  for (int i = 0; i < 4; ++i) {
    if (a.out.shape[i] != want[i]) {
      throw Error("out", std::string(kDimNames[i]) + " (" + s(a.out.shape[i]) + ") must be " +
                             s(want[i]) + " (shape [B, Sq, Hq, Dv] = [" + s(sh.B) + ", " +
                             s(sh.Sq) + ", " + s(sh.Hq) + ", " + s(sh.Dv) + "])");
    }
  }
  if (a.lse.present()) {
    check_tensor(as_const(a.lse), "lse", 3, DType::kF32);
    if (dtype == DType::kF64) throw Error("lse", "is float32 and only for float32 inputs");
    if (a.lse.shape[0] != sh.B || a.lse.shape[1] != sh.Hq || a.lse.shape[2] != sh.Sq) {
      throw Error("lse", "shape must be [B, Hq, Sq] = [" + s(sh.B) + ", " + s(sh.Hq) + ", " +
                             s(sh.Sq) + "]");
    }
    check_no_overlap(as_const(a.lse), "lse", as_const(a.out), "out");
  }
  if (!a.key_lengths.empty()) {
    if (static_cast<int64_t>(a.key_lengths.size()) != sh.B) {
      throw Error("key_lengths", "must have one entry per batch (" + s(sh.B) + "), got " +
                                     s(a.key_lengths.size()));
    }
    for (size_t b = 0; b < a.key_lengths.size(); ++b) {
      if (a.key_lengths[b] < 0 || a.key_lengths[b] > sh.Sk) {
        throw Error("key_lengths", "entry " + s(b) + " (" + s(a.key_lengths[b]) +
                                       ") must be in [0, " + s(sh.Sk) + "]");
      }
    }
  }
  for (auto [t, name] : {std::pair{a.q, "q"}, {a.k, "k"}, {a.v, "v"}}) {
    check_no_overlap(as_const(a.out), "out", t, name);
    check_finite(t, name);
  }
  return sh;
}

void check_unused(const AttentionArgs& a, std::string_view mechanism, bool memory, bool gate,
                  bool filter, bool lse) {
  const std::string m(mechanism);
  if (!memory && (a.memory.present() || a.memory_out.present()))
    throw Error("memory", "is not used by " + m);
  if (!gate && a.gate.present()) throw Error("gate", "is not used by " + m);
  if (!filter && a.filter.present()) throw Error("filter", "is not used by " + m);
  if (!lse && a.lse.present()) throw Error("lse", "is not produced by " + m);
}

// memory [B, L, Hq, Dk] and optional memory_out [B, L, Hq, Dv]; keys = values = memory
// rows somewhere, so Dk == Dv. Shared by luna and memory.
void check_memory_args(const AttentionArgs& a, const Shape& sh, DType dtype) {
  if (sh.Dk != sh.Dv) {
    throw Error("v", "head_dim (" + std::to_string(sh.Dv) + ") must equal q head_dim (" +
                         std::to_string(sh.Dk) + "): memory rows serve as keys and values");
  }
  check_tensor(a.memory, "memory", 4, dtype);
  if (a.memory.shape[0] != sh.B || a.memory.shape[2] != sh.Hq || a.memory.shape[3] != sh.Dk ||
      a.memory.shape[1] < 1) {
    throw Error("memory", "shape " + shape_string(a.memory) + " must be [B, L >= 1, Hq, Dk]");
  }
  check_finite(a.memory, "memory");
  if (a.memory_out.present()) {
    check_tensor(as_const(a.memory_out), "memory_out", 4, dtype);
    if (a.memory_out.shape != a.memory.shape) {
      throw Error("memory_out", "shape " + shape_string(a.memory_out) +
                                    " must equal memory shape " + shape_string(a.memory));
    }
    check_no_overlap(as_const(a.memory_out), "memory_out", a.memory, "memory");
    check_no_overlap(as_const(a.memory_out), "memory_out", as_const(a.out), "out");
  }
}

void check_stream_spec(const StreamSpec& s) {
  if (s.batch < 1 || s.heads < 1 || s.kv_heads < 1 || s.head_dim < 1 || s.value_dim < 1) {
    throw Error("stream", "batch, heads, kv_heads, head_dim and value_dim must be >= 1");
  }
  if (s.heads % s.kv_heads != 0) throw Error("stream", "kv_heads must divide heads");
  if (s.head_dim > kMaxHeadDim || s.value_dim > kMaxHeadDim) {
    throw Error("stream", "head dims must be <= " + std::to_string(kMaxHeadDim));
  }
}

namespace {
void check_stream_tensor(const ConstTensorView& t, const char* name, const StreamSpec& s,
                         int64_t heads, int64_t dim) {
  check_tensor(t, name, 4, DType::kF32);
  if (t.shape[0] != s.batch || t.shape[2] != heads || t.shape[3] != dim) {
    throw Error(name, "shape " + shape_string(t) + " must be [" + std::to_string(s.batch) +
                          ", T, " + std::to_string(heads) + ", " + std::to_string(dim) + "]");
  }
  check_finite(t, name);
}
}  // namespace

void check_stream_append(const StreamSpec& s, const ConstTensorView& k, const ConstTensorView& v) {
  check_stream_tensor(k, "k", s, s.kv_heads, s.head_dim);
  check_stream_tensor(v, "v", s, s.kv_heads, s.value_dim);
  if (v.shape[1] != k.shape[1]) throw Error("v", "seq must equal k seq");
}

void check_stream_query(const StreamSpec& s, const ConstTensorView& q, const TensorView& out) {
  check_stream_tensor(q, "q", s, s.heads, s.head_dim);
  check_tensor(as_const(out), "out", 4, DType::kF32);
  if (out.shape[0] != q.shape[0] || out.shape[1] != q.shape[1] || out.shape[2] != s.heads ||
      out.shape[3] != s.value_dim) {
    throw Error("out", "shape " + shape_string(out) + " must be [B, Tq, Hq, Dv]");
  }
  check_no_overlap(as_const(out), "out", q, "q");
}

void check_backward(const BackwardArgs& g, DType dtype) {
  const AttentionArgs& a = g.forward;
  const std::pair<ConstTensorView, ConstTensorView> pairs[] = {{g.dout, as_const(a.out)},
                                                               {as_const(g.dq), a.q},
                                                               {as_const(g.dk), a.k},
                                                               {as_const(g.dv), a.v}};
  const char* names[] = {"dout", "dq", "dk", "dv"};
  const char* like[] = {"out", "q", "k", "v"};
  for (int t = 0; t < 4; ++t) {
    check_tensor(pairs[t].first, names[t], 4, dtype);
    if (pairs[t].first.shape != pairs[t].second.shape) {
      throw Error(names[t], "shape " + shape_string(pairs[t].first) + " must equal " + like[t] +
                                " shape " + shape_string(pairs[t].second));
    }
  }
  check_finite(g.dout, "dout");
  if (g.dgate.present() && !a.gate.present()) {
    throw Error("dgate", "is the gradient of gate, which was not given");
  }
  if (g.dfilter.present() && !a.filter.present()) {
    throw Error("dfilter", "is the gradient of filter, which was not given");
  }
  if (g.dmemory.present() && !a.memory.present()) {
    throw Error("dmemory", "is the gradient of memory, which was not given");
  }
  for (int t = 1; t < 4; ++t) {
    for (int u = 0; u < 4; ++u) {
      if (u != t) check_no_overlap(pairs[t].first, names[t], pairs[u].first, names[u]);
      check_no_overlap(pairs[t].first, names[t], pairs[u].second, like[u]);
    }
  }
}

void check_input_gradient(const BackwardArgs& g, const TensorView& grad, std::string_view name,
                          const ConstTensorView& input, std::string_view input_name, DType dtype,
                          bool required) {
  if (!grad.present() && !required) return;
  check_tensor(as_const(grad), name, input.rank, dtype);
  if (grad.shape != input.shape) {
    throw Error(std::string(name), "shape " + shape_string(grad) + " must equal " +
                                       std::string(input_name) + " shape " + shape_string(input));
  }
  const AttentionArgs& a = g.forward;
  for (auto [t, n] : {std::pair{a.q, "q"},
                      {a.k, "k"},
                      {a.v, "v"},
                      {a.memory, "memory"},
                      {a.gate, "gate"},
                      {a.filter, "filter"},
                      {g.dout, "dout"},
                      {as_const(g.dq), "dq"},
                      {as_const(g.dk), "dk"},
                      {as_const(g.dv), "dv"},
                      {as_const(g.dgate), "dgate"},
                      {as_const(g.dmemory), "dmemory"},
                      {as_const(g.dfilter), "dfilter"}}) {
    if (t.present() && n != name) check_no_overlap(as_const(grad), name, t, n);
  }
}

}  // namespace attnkit::detail
