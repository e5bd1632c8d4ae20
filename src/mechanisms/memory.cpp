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

class Memory final : public Mechanism {
 public:
  Memory(const AttentionOptions& o, const MemoryConfig& c) : Mechanism(o), c_(c) {}
  std::string_view name() const override { return "memory"; }
  Capabilities capabilities() const override {
    return {.causal = true,
            .backward = true,
            .needs_memory = true,
            .uses_filter = c_.filter_type == MemoryFilter::kConv,
            .aligned = true};
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
