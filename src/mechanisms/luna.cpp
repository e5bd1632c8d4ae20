// luna: nested pack/unpack attention through a memory (SPEC 4.1), causal and not.
#include "src/mechanisms/reference_backed.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {

namespace {

class Luna final : public ReferenceBacked {
 public:
  using ReferenceBacked::ReferenceBacked;
  std::string_view name() const override { return "luna"; }
  Capabilities capabilities() const override { return {.causal = true, .needs_memory = true}; }

 protected:
  void validate(const AttentionArgs& a) const override {
    const Shape sh = check_qkv(a, input_dtype(a));
    check_unused(a, name(), true, false, false, false);
    check_memory_args(a, sh, input_dtype(a));
  }
  void reference(const AttentionArgs& a) const override { ref::luna_ref(a, options()); }
};

}  // namespace

std::unique_ptr<Mechanism> make_luna(const AttentionOptions& o, KeyValues&) {
  return std::make_unique<Luna>(o);
}

}  // namespace attnkit::detail
