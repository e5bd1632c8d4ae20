// heinsen: softmax-like attention with constant cost per token in log space (SPEC 5).
#include "src/mechanisms/reference_backed.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {
namespace {

class Heinsen final : public ReferenceBacked {
 public:
  using ReferenceBacked::ReferenceBacked;
  std::string_view name() const override { return "heinsen"; }
  Capabilities capabilities() const override { return {.causal = true}; }

 protected:
  void validate(const AttentionArgs& a) const override {
    check_qkv(a, input_dtype(a));
    check_unused(a, name(), false, false, false, false);
  }
  void reference(const AttentionArgs& a) const override { ref::heinsen_ref(a, options()); }
};

}  // namespace

std::unique_ptr<Mechanism> make_heinsen(const AttentionOptions& o, KeyValues&) {
  if (o.scale != 0.0) throw Error("scale", "heinsen attention has no logit scale; leave it 0");
  return std::make_unique<Heinsen>(o);
}

}  // namespace attnkit::detail
