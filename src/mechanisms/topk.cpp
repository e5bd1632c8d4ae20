// topk: top-k attention with query chunks (SPEC 3(a)).
#include "src/mechanisms/reference_backed.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {
namespace {

class Topk final : public ReferenceBacked {
 public:
  Topk(const AttentionOptions& o, const TopkConfig& c) : ReferenceBacked(o), c_(c) {}
  std::string_view name() const override { return "topk"; }
  Capabilities capabilities() const override { return {.causal = true}; }
  std::string describe() const override {
    return "topk(k=" + std::to_string(c_.k) + ",query_chunk=" + std::to_string(c_.query_chunk) + ") " +
           to_string(options());
  }

 protected:
  void validate(const AttentionArgs& a) const override {
    check_qkv(a, input_dtype(a));
    check_unused(a, name(), false, false, false, false);
  }
  void reference(const AttentionArgs& a) const override { ref::topk_ref(a, options(), c_); }

 private:
  TopkConfig c_;
};

}  // namespace

std::unique_ptr<Mechanism> make_topk(const AttentionOptions& o, KeyValues& kv) {
  TopkConfig c;
  c.k = kv.get_int("k", c.k, 1, 1 << 30);
  c.query_chunk = kv.get_int("query_chunk", c.query_chunk, 1, 1 << 20);
  return std::make_unique<Topk>(o, c);
}

}  // namespace attnkit::detail
