// Factories of the registered mechanisms (one per src/mechanisms/<name>.cpp).
#pragma once

#include <memory>

#include "attnkit/mechanism.hpp"

namespace attnkit::detail {

using Factory = std::unique_ptr<Mechanism> (*)(const AttentionOptions&, KeyValues&);

std::unique_ptr<Mechanism> make_softmax(const AttentionOptions&, KeyValues&);
std::unique_ptr<Mechanism> make_linear(const AttentionOptions&, KeyValues&);
std::unique_ptr<Mechanism> make_rfa(const AttentionOptions&, KeyValues&);
std::unique_ptr<Mechanism> make_performer(const AttentionOptions&, KeyValues&);
std::unique_ptr<Mechanism> make_ra(const AttentionOptions&, KeyValues&);
std::unique_ptr<Mechanism> make_lara(const AttentionOptions&, KeyValues&);
std::unique_ptr<Mechanism> make_topk(const AttentionOptions&, KeyValues&);
std::unique_ptr<Mechanism> make_luna(const AttentionOptions&, KeyValues&);
std::unique_ptr<Mechanism> make_memory(const AttentionOptions&, KeyValues&);
std::unique_ptr<Mechanism> make_heinsen(const AttentionOptions&, KeyValues&);

}  // namespace attnkit::detail
