// memory: chunk-wise memory-augmented attention (RMT recurrence) with the filtered
// memory interface of arXiv 2404.00798 (SPEC 4.2, 4.3). float32 runs src/cpu/memory.cpp;
// float64 runs the reference.
#include <cmath>

#include "src/cpu/kernels.hpp"
#include "src/mechanisms/kv_cache.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {

namespace {

// constexpr, not a std::vector: factories run during other files' static initialisation.
constexpr std::string_view kFilters[] = {"conv", "maxpool"};

// The memory-write filter weights f [Hk, width] (a forward's filter array, a stream's copy):
// rank, dtype, shape and finite values.
void check_filter_weights(const ConstTensorView& f, DType dtype, int64_t hk, int64_t width) {
  check_tensor(f, "filter", 2, dtype);
  if (f.shape[0] != hk || f.shape[1] != width) {
    throw Error("filter", "shape " + shape_string(f) + " must be [Hk, width] = [" +
                              std::to_string(hk) + ", " + std::to_string(width) + "]");
  }
  check_finite(f, "filter");
}

// The memory stream, of fixed size: per q head, `keys_` and `values_` [B, L + chunk, Hq, D]
// hold the memory after the last full chunk M_tau in their first L rows (memory rows are keys
// and values alike) and the current chunk's tokens (at most `chunk`, their kv head's) after
// them. A query reads [M_tau ; the chunk's tokens] as the causal forward's last token does:
// softmax attention over those rows by the softmax kernels, O((L + chunk) D) per query. When a
// token arrives after a full chunk, that chunk writes M_tau+1: the forward kernel over it,
// with zero queries (the write reads only keys and memory), gives it as memory_out. The
// write's conv filter is StreamSpec::filter's weights, or the box filter without them, as in
// the forward.
class MemoryStream final : public StreamingState {
 public:
  MemoryStream(const StreamSpec& s, const MemoryConfig& c, const AttentionOptions& o)
      : spec_(s),
        c_(c),
        o_(o),
        slots_(s.memory.present() ? s.memory.shape[1] : 0),
        keys_({s.batch, slots_ + c.chunk, s.heads, s.head_dim}),
        values_({s.batch, slots_ + c.chunk, s.heads, s.value_dim}),
        next_({s.batch, slots_, s.heads, s.head_dim}),
        zeros_({s.batch, c.chunk, s.heads, s.head_dim}),
        out_({s.batch, c.chunk, s.heads, s.value_dim}) {
    if (s.value_dim != s.head_dim) {
      throw Error("value_dim", "must equal head_dim: memory rows serve as keys and values");
    }
    if (s.filter.present()) copy_filter(s.filter);
    check_stream_memory(s);
    load_memory(s.memory);
  }

  void append(const ConstTensorView& k, const ConstTensorView& v, Context& ctx) override {
    check_stream_append(spec_, k, v);
    const int64_t group = spec_.heads / spec_.kv_heads;
    for (int64_t t = 0; t < k.shape[1]; ++t) {
      if (count_ == c_.chunk) write_memory(ctx);
      for (int64_t b = 0; b < spec_.batch; ++b)
        for (int64_t h = 0; h < spec_.heads; ++h) {
          std::copy_n(k.row<const float>(b, t, h / group), spec_.head_dim,
                      keys_.view().row<float>(b, slots_ + count_, h));
          std::copy_n(v.row<const float>(b, t, h / group), spec_.value_dim,
                      values_.view().row<float>(b, slots_ + count_, h));
        }
      ++count_, ++length_;
    }
  }

  void query(const ConstTensorView& q, const TensorView& out, Context& ctx) override {
    check_stream_query(spec_, q, out);
    if (q.shape[1] == 0) return;
    AttentionArgs a;
    a.q = q;
    a.k = rows(keys_.cview(), 0, slots_ + count_);
    a.v = rows(values_.cview(), 0, slots_ + count_);
    a.out = out;
    softmax_kernel(a, Problem::resolve(a, {.scale = o_.scale}), ctx);
    check_result(as_const(out), "out", AttentionArgs{.q = q});
  }

  size_t state_bytes() const override {
    return (keys_.size() + values_.size() + next_.size() + zeros_.size() + out_.size() +
            filter_.size()) *
           sizeof(float);
  }
  int64_t length() const override { return length_; }

 private:
  // Rows [from, from + n) of t; with every_group, only each kv head's first q head: the
  // chunk's tokens as the forward's k, v [B, n, Hk, D].
  ConstTensorView rows(ConstTensorView t, int64_t from, int64_t n, bool every_group = false) const {
    t.data = static_cast<const float*>(t.data) + from * t.stride[1];
    t.shape[1] = n;
    if (every_group) {
      t.shape[2] = spec_.kv_heads;
      t.stride[2] *= spec_.heads / spec_.kv_heads;
    }
    return t;
  }
  void copy_filter(const ConstTensorView& f) {
    check_filter_weights(f, DType::kF32, spec_.kv_heads, c_.width);
    filter_ = Tensor<float>({spec_.kv_heads, c_.width});
    for (int64_t h = 0; h < spec_.kv_heads; ++h)
      for (int64_t w = 0; w < c_.width; ++w)
        filter_.view().at<float>(h, w) = f.at<const float>(h, w);
  }
  // The first L rows of keys_ and values_: memory m [B, L, Hq, D].
  void load_memory(const ConstTensorView& m) {
    for (int64_t b = 0; b < spec_.batch; ++b)
      for (int64_t l = 0; l < slots_; ++l)
        for (int64_t h = 0; h < spec_.heads; ++h) {
          std::copy_n(m.row<const float>(b, l, h), spec_.head_dim,
                      keys_.view().row<float>(b, l, h));
          std::copy_n(m.row<const float>(b, l, h), spec_.head_dim,
                      values_.view().row<float>(b, l, h));
        }
  }
  // The full chunk writes M_tau+1 (the causal forward's memory_out over it); the buffer
  // empties.
  void write_memory(Context& ctx) {
    AttentionArgs a;
    a.q = zeros_.cview();
    a.k = rows(keys_.cview(), slots_, count_, /*every_group=*/true);
    a.v = rows(values_.cview(), slots_, count_, /*every_group=*/true);
    a.out = out_.view();
    a.memory = rows(keys_.cview(), 0, slots_);
    a.memory_out = next_.view();
    if (filter_.size()) a.filter = filter_.cview();
    AttentionOptions o = o_;
    o.causal = true;
    cpu::memory_forward(a, Problem::resolve(a, o), c_, ctx);
    load_memory(next_.cview());
    count_ = 0;
  }

  StreamSpec spec_;
  MemoryConfig c_;
  AttentionOptions o_;
  int64_t slots_;
  Tensor<float> keys_, values_, next_, zeros_, out_, filter_;
  int64_t count_ = 0, length_ = 0;
};

class Memory final : public Mechanism {
 public:
  Memory(const AttentionOptions& o, const MemoryConfig& c) : Mechanism(o), c_(c) {}
  std::string_view name() const override { return "memory"; }
  Capabilities capabilities() const override {
    return {.causal = true,
            .streaming = true,
            .backward = true,
            .needs_memory = true,
            .uses_filter = c_.filter_type == MemoryFilter::kConv,
            .aligned = true};
  }
  std::unique_ptr<StreamingState> new_stream(const StreamSpec& s) const override {
    check_stream_spec(s, /*window_ok=*/false, /*filter_ok=*/true);
    return make_state([&] { return std::make_unique<MemoryStream>(s, c_, options()); });
  }
  void validate_backward(const BackwardArgs& g) const override {
    validate(g.forward);
    const DType dt = input_dtype(g.forward);
    check_backward(g, dt);
    const DType wide = compute_dtype(dt);  // memory and filter are float32 for narrow q, k, v
    check_input_gradient(g, g.dmemory, "dmemory", g.forward.memory, "memory", wide);
    check_input_gradient(g, g.dfilter, "dfilter", g.forward.filter, "filter", wide);
  }
  void backward_reference(const BackwardArgs& g, const Problem&) const override {
    ref::memory_backward_ref(g, options(), c_);
  }
  void backward_kernel(const BackwardArgs& g, const Problem& p, Context& ctx) const override {
    cpu::memory_backward(g, p, c_, ctx);
  }

 protected:
  void validate(const AttentionArgs& a) const override {
    const Shape sh = check_qkv(a, input_dtype(a));
    if (sh.Sq != sh.Sk) {
      throw Error("k", "seq (" + std::to_string(sh.Sk) + ") must equal q seq (" +
                           std::to_string(sh.Sq) + "): chunks cut queries and keys alike");
    }
    const DType wide = compute_dtype(input_dtype(a));
    check_memory_args(a, sh, wide);
    if (a.filter.present()) check_filter_weights(a.filter, wide, sh.Hk, c_.width);
  }
  void run_reference(const AttentionArgs& a, const Problem&) const override {
    ref::memory_ref(a, options(), c_);
  }
  void run_kernel(const AttentionArgs& a, const Problem& p, Context& ctx) const override {
    cpu::memory_forward(a, p, c_, ctx);
  }

 private:
  MemoryConfig c_;
};

}  // namespace

std::unique_ptr<Mechanism> make_memory(const AttentionOptions& o, KeyValues& kv) {
  MemoryConfig c;
  c.chunk = kv.get_int("chunk", c.chunk, 1, 1 << 20, "tokens per chunk (segment)");
  c.width =
      kv.get_int("width", c.width, 1, 1024, "kappa: memory-write filter width (1: no filtering)");
  c.filter_type = static_cast<MemoryFilter>(
      kv.get_choice("filter_type", 0, kFilters,
                    "memory-write filter: conv (weights: the filter array) or maxpool"));
  c.temperature = kv.get_double("temperature", c.temperature, 0.0, 1e6,
                                "memory-write logit divisor (0: sqrt(head_dim))");
  return std::make_unique<Memory>(o, c);
}

}  // namespace attnkit::detail
