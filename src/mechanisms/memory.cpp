// memory: chunk-wise memory-augmented attention (RMT recurrence) with the filtered
// memory interface of arXiv 2404.00798 (SPEC 4.2, 4.3). float32 runs src/cpu/memory.cpp;
// float64 runs the reference.
#include <cmath>

#include "src/cpu/kernels.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {

namespace {

// constexpr, not a std::vector: factories run during other files' static initialisation.
constexpr std::string_view kFilters[] = {"conv", "maxpool"};

// The memory stream, of fixed size: the memory after the last full chunk M_tau
// [B, L, Hq, D] and the current chunk's keys and values (at most `chunk` tokens). Both
// steps run the forward kernel on the buffer, so the stream is the causal forward by
// construction: a query is the last row of the forward over the buffered chunk from M_tau,
// with zero queries before it (a token's output reads only its own query; the memory write
// reads keys and memory); when a token arrives after a full chunk, that chunk writes
// M_tau+1 (the forward's memory_out) and the buffer empties. The write's conv filter is
// StreamSpec::filter's weights, or the box filter without them, as in the forward.
class MemoryStream final : public StreamingState {
 public:
  MemoryStream(const StreamSpec& s, const MemoryConfig& c, const AttentionOptions& o)
      : spec_(s),
        c_(c),
        o_(o),
        memory_(copy_stream_memory(s)),
        next_(std::make_shared<Tensor<float>>(memory_->shape())),
        keys_({s.batch, c.chunk, s.kv_heads, s.head_dim}),
        values_({s.batch, c.chunk, s.kv_heads, s.value_dim}),
        queries_({s.batch, c.chunk, s.heads, s.head_dim}),
        out_({s.batch, c.chunk, s.heads, s.value_dim}) {
    if (s.value_dim != s.head_dim) {
      throw Error("value_dim", "must equal head_dim: memory rows serve as keys and values");
    }
    if (s.filter.present()) {
      check_tensor(s.filter, "filter", 2, DType::kF32);
      if (s.filter.shape[0] != s.kv_heads || s.filter.shape[1] != c.width) {
        throw Error("filter", "shape " + shape_string(s.filter) + " must be [Hk, width] = [" +
                                  std::to_string(s.kv_heads) + ", " + std::to_string(c.width) +
                                  "]");
      }
      check_finite(s.filter, "filter");
      filter_ = Tensor<float>({s.kv_heads, c.width});
      for (int64_t h = 0; h < s.kv_heads; ++h)
        for (int64_t w = 0; w < c.width; ++w)
          filter_.view().at<float>(h, w) = s.filter.at<const float>(h, w);
    }
  }

  void append(const ConstTensorView& k, const ConstTensorView& v, Context& ctx) override {
    check_stream_append(spec_, k, v);
    for (int64_t t = 0; t < k.shape[1]; ++t) {
      if (count_ == c_.chunk) write_memory(ctx);
      for (int64_t b = 0; b < spec_.batch; ++b)
        for (int64_t h = 0; h < spec_.kv_heads; ++h) {
          std::copy_n(k.row<const float>(b, t, h), spec_.head_dim,
                      keys_.view().row<float>(b, count_, h));
          std::copy_n(v.row<const float>(b, t, h), spec_.value_dim,
                      values_.view().row<float>(b, count_, h));
        }
      ++count_, ++length_;
    }
  }

  void query(const ConstTensorView& q, const TensorView& out, Context& ctx) override {
    check_stream_query(spec_, q, out);
    const int64_t last = count_ - 1;
    for (int64_t r = 0; r < q.shape[1]; ++r) {
      if (count_ == 0) {  // nothing appended: no token to read
        for (int64_t b = 0; b < spec_.batch; ++b)
          for (int64_t h = 0; h < spec_.heads; ++h)
            std::fill_n(out.row<float>(b, r, h), spec_.value_dim, 0.0f);
        continue;
      }
      for (int64_t b = 0; b < spec_.batch; ++b)
        for (int64_t h = 0; h < spec_.heads; ++h)
          std::copy_n(q.row<const float>(b, r, h), spec_.head_dim,
                      queries_.view().row<float>(b, last, h));
      run(TensorView{}, ctx);
      for (int64_t b = 0; b < spec_.batch; ++b)
        for (int64_t h = 0; h < spec_.heads; ++h)
          std::copy_n(out_.view().row<float>(b, last, h), spec_.value_dim, out.row<float>(b, r, h));
    }
    clear_row(last);
    check_result(as_const(out), "out", AttentionArgs{.q = q});
  }

  size_t state_bytes() const override {
    return (memory_->size() + next_->size() + keys_.size() + values_.size() + queries_.size() +
            out_.size() + filter_.size()) *
           sizeof(float);
  }
  int64_t length() const override { return length_; }

 private:
  // The causal forward over the buffered tokens from the current memory (memory_out: the
  // written memory, or absent).
  void run(const TensorView& memory_out, Context& ctx) {
    AttentionArgs a;
    a.q = prefix(queries_.cview());
    a.k = prefix(keys_.cview());
    a.v = prefix(values_.cview());
    a.out = out_.view();
    a.out.shape[1] = count_;
    a.memory = memory_->cview();
    a.memory_out = memory_out;
    if (filter_.size()) a.filter = filter_.cview();
    AttentionOptions o = o_;
    o.causal = true;
    cpu::memory_forward(a, Problem::resolve(a, o), c_, ctx);
  }
  void write_memory(Context& ctx) {
    run(next_->view(), ctx);
    std::swap(memory_, next_);
    count_ = 0;
  }
  ConstTensorView prefix(ConstTensorView t) const {
    t.shape[1] = count_;
    return t;
  }
  void clear_row(int64_t row) {
    if (row < 0) return;
    for (int64_t b = 0; b < spec_.batch; ++b)
      for (int64_t h = 0; h < spec_.heads; ++h)
        std::fill_n(queries_.view().row<float>(b, row, h), spec_.head_dim, 0.0f);
  }

  StreamSpec spec_;
  MemoryConfig c_;
  AttentionOptions o_;
  std::shared_ptr<Tensor<float>> memory_, next_;
  Tensor<float> keys_, values_, queries_, out_, filter_;
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
    const DType dt = g.forward.q.dtype;
    check_backward(g, dt);
    check_input_gradient(g, g.dmemory, "dmemory", g.forward.memory, "memory", dt);
    check_input_gradient(g, g.dfilter, "dfilter", g.forward.filter, "filter", dt);
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
    check_memory_args(a, sh, input_dtype(a));
    if (a.filter.present()) {
      check_tensor(a.filter, "filter", 2, input_dtype(a));
      if (a.filter.shape[0] != sh.Hk || a.filter.shape[1] != c_.width) {
        throw Error("filter", "shape " + shape_string(a.filter) + " must be [Hk, width] = [" +
                                  std::to_string(sh.Hk) + ", " + std::to_string(c_.width) + "]");
      }
      check_finite(a.filter, "filter");
    }
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
