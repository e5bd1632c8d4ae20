// The registry: the one table that lists every mechanism.
#include "src/mechanisms/registry.hpp"

#include <cmath>

#include "attnkit/error.hpp"

namespace attnkit {
namespace {

struct Entry {
  const char* name;
  detail::Factory factory;
};

constexpr Entry kRegistry[] = {
    {"softmax", detail::make_softmax},     {"linear", detail::make_linear},
    {"heinsen", detail::make_heinsen},     {"rfa", detail::make_rfa},
    {"performer", detail::make_performer}, {"ra", detail::make_ra},
    {"lara", detail::make_lara},           {"topk", detail::make_topk},
    {"luna", detail::make_luna},           {"memory", detail::make_memory},
};

}  // namespace

std::vector<std::string> mechanism_names() {
  std::vector<std::string> names;
  for (const Entry& e : kRegistry) names.emplace_back(e.name);
  return names;
}

std::vector<ConfigKey> config_keys(std::string_view name) {
  for (const Entry& e : kRegistry) {
    if (name == e.name) {
      KeyValues kv;
      (void)e.factory({}, kv);  // defaults: every get_* records its key
      return kv.keys();
    }
  }
  (void)make_mechanism(name);  // throws the unknown-name Error
  return {};
}

std::unique_ptr<Mechanism> make_mechanism(std::string_view name, const AttentionOptions& options,
                                          std::string_view config) {
  if (!std::isfinite(options.scale) || options.scale < 0) {
    throw Error("scale", "must be finite and >= 0 (0 means 1/sqrt(head_dim))");
  }
  // Kernels compute in float32: a larger scale would become inf there.
  if (options.scale > 3.4e38) throw Error("scale", "must be <= 3.4e38 (the float32 range)");
  for (const Entry& e : kRegistry) {
    if (name == e.name) {
      KeyValues kv = KeyValues::parse(config);
      std::unique_ptr<Mechanism> m = e.factory(options, kv);
      kv.expect_consumed(name);
      m->config_ = kv.keys();
      return m;
    }
  }
  std::string known;
  for (const Entry& e : kRegistry) known += (known.empty() ? "" : ", ") + std::string(e.name);
  throw Error("mechanism", "unknown name '" + std::string(name) + "' (known: " + known + ")");
}

}  // namespace attnkit
