// Mechanism base behaviour: validate-then-run, and the default "no stream".
#include "attnkit/mechanism.hpp"

#include "attnkit/error.hpp"

namespace attnkit {

std::string Mechanism::describe() const { return std::string(name()) + " " + to_string(options_); }

std::string Mechanism::check(const AttentionArgs& args) const {
  try {
    validate(args);
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

void Mechanism::forward(const AttentionArgs& args, Context& ctx) const {
  validate(args);
  if (options_.causal && !capabilities().causal) {
    throw Error("causal", std::string(name()) + " has no causal form");
  }
  if (args.q.shape[1] == 0) return;  // no queries: nothing to compute
  run(args, ctx);
}

std::unique_ptr<StreamingState> Mechanism::new_stream(const StreamSpec&) const {
  throw Error("stream", std::string(name()) + " has no streaming form");
}

void Mechanism::backward(const BackwardArgs&, Context&) const {
  throw Error("backward", std::string(name()) + " has no backward pass yet");
}

}  // namespace attnkit
