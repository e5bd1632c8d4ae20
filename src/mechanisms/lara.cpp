// lara: linear randomized attention with segment-mean landmarks (SPEC 2(a)); non-causal.
// float32 runs src/cpu/lara.cpp; float64 runs the reference.
#include <cmath>

#include "src/cpu/kernels.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {
namespace {

// constexpr, not a std::vector: factories run during other files' static initialisation.
constexpr std::string_view kMis[] = {"opt", "biased", "bh"};

class Lara final : public Mechanism {
 public:
  Lara(const AttentionOptions& o, const LaraConfig& c) : Mechanism(o), c_(c) {}
  std::string_view name() const override { return "lara"; }
  Capabilities capabilities() const override { return {.aligned = true}; }

 protected:
  void validate(const AttentionArgs& a) const override { check_qkv(a, input_dtype(a)); }
  void run_reference(const AttentionArgs& a, const Problem&) const override {
    ref::lara_ref(a, options(), c_);
  }
  void run_kernel(const AttentionArgs& a, const Problem& p, Context& ctx) const override {
    cpu::lara_forward(a, p, c_, ctx);
  }

 private:
  LaraConfig c_;
};

}  // namespace

std::unique_ptr<Mechanism> make_lara(const AttentionOptions& o, KeyValues& kv) {
  if (o.causal) {
    throw Error("causal", "lara is non-causal by nature (its landmarks pool the whole sequence)");
  }
  LaraConfig c;
  c.landmarks = kv.get_int("landmarks", c.landmarks, 1, 65536,
                           "C: landmarks (segment means of the queries) per head");
  c.mis =
      static_cast<LaraMis>(kv.get_choice("mis", 0, kMis, "multiple-importance-sampling weights"));
  c.alpha = kv.get_double("alpha", c.alpha, -1e6, 1e6, "alpha coefficient of the mis weights");
  c.sample =
      kv.get_bool("sample", c.sample, "draw omega_c ~ q_c (training); 0: omega_c = mu_c (eval)");
  c.seed = kv.get_u64("seed", c.seed, "random draws: same seed, same result");
  return std::make_unique<Lara>(o, c);
}

}  // namespace attnkit::detail
