// Mechanism base behaviour: validate-then-run, and the default "no stream". The masks'
// rules and the splitting of packed batches and left padding: src/mechanisms/masks.cpp.
#include "attnkit/mechanism.hpp"

#include "attnkit/error.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/mechanisms/widen.hpp"

namespace attnkit {

void StreamingState::append_gated(const ConstTensorView&, const ConstTensorView&,
                                  const ConstTensorView&, Context&) {
  throw Error("gate", "this stream takes no gate (only linear gated=1 does); use append(k, v)");
}

std::string Mechanism::describe() const {
  std::string s(name());
  for (size_t i = 0; i < config_.size(); ++i) {
    s.append(i ? "," : "(").append(config_[i].key).append("=").append(config_[i].value);
  }
  if (!config_.empty()) s.append(")");
  return s.append(" ").append(to_string(options_));
}

void Mechanism::check_declared(const AttentionArgs& args) const {
  const Capabilities c = capabilities();
  detail::check_unused(args, name(), c.needs_memory, c.uses_gate, c.uses_filter, c.emits_lse);
}

void Mechanism::validate_all(const AttentionArgs& args) const {
  check_declared(args);
  validate(args);
  check_masks(args);
}

std::string Mechanism::check(const AttentionArgs& args) const {
  try {
    validate_all(args);
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

std::string Mechanism::check_inputs(const AttentionArgs& args) const {
  const detail::InputsOnly scope;
  return check(args);
}

void Mechanism::validate_inputs(const AttentionArgs& args) const {
  const detail::InputsOnly scope;
  validate_all(args);
}

void Mechanism::forward(const AttentionArgs& args, Context& ctx) const {
  {
    const detail::ScanThreads scans(ctx);
    validate_all(args);
  }
  if (args.q.shape[1] == 0) return;  // no queries: nothing to compute
  run_split(args, ctx);
  const detail::ScanThreads scans(ctx);
  detail::check_result(as_const(args.out), "out", args);
  if (args.memory_out.present())
    detail::check_result(as_const(args.memory_out), "memory_out", args);
}

void Mechanism::backward(const BackwardArgs& g, Context& ctx) const {
  {
    const detail::ScanThreads scans(ctx);
    check_declared(g.forward);
    validate_backward(g);
    check_masks(g.forward);
  }
  run_backward_split(g, ctx);
  const detail::ScanThreads scans(ctx);
  for (auto [t, n] : {std::pair{g.dq, "dq"},
                      {g.dk, "dk"},
                      {g.dv, "dv"},
                      {g.dgate, "dgate"},
                      {g.dmemory, "dmemory"},
                      {g.dfilter, "dfilter"}}) {
    if (t.present()) detail::check_result(as_const(t), n, g.forward);
  }
}

std::unique_ptr<StreamingState> Mechanism::new_stream(const StreamSpec&) const {
  throw Error("stream", std::string(name()) + " has no streaming form");
}

void Mechanism::validate_backward(const BackwardArgs&) const {
  throw Error("backward", std::string(name()) + " has no backward pass yet");
}

void Mechanism::backward_reference(const BackwardArgs&, const Problem&) const {
  throw Error("backward", std::string(name()) + " has no backward pass yet");
}

void Mechanism::backward_kernel(const BackwardArgs&, const Problem&, Context&) const {
  throw Error("backward", std::string(name()) + " has no backward pass yet");
}

// Narrow q, k, v run on float32 copies unless the mechanism has a kernel for them; a narrow
// out is a float32 stand-in rounded once at the end (the bfloat16 kernels write float32).
void Mechanism::run(const AttentionArgs& args, const Problem& p, Context& ctx) const {
  if (args.q.dtype == DType::kF64) {
    run_reference(args, p);
    return;
  }
  const bool native = args.q.dtype == DType::kBF16 && capabilities().bfloat16;
  if (!is_narrow(args.q.dtype) || (native && !is_narrow(args.out.dtype))) {
    run_kernel(args, p, ctx);
    return;
  }
  const auto copied = [native](const ConstTensorView& t) { return native ? ConstTensorView{} : t; };
  detail::Widened w(ctx, {copied(args.q), copied(args.k), copied(args.v), as_const(args.out)});
  AttentionArgs a = args;
  if (!native) {
    a.q = w.input(args.q);
    a.k = w.input(args.k);
    a.v = w.input(args.v);
  }
  a.out = w.output(args.out);
  run_kernel(a, p, ctx);
  w.finish();
}

void Mechanism::run_backward(const BackwardArgs& g, const Problem& p, Context& ctx) const {
  const DType in = g.forward.q.dtype;
  if (in == DType::kF64) {
    backward_reference(g, p);
    return;
  }
  if (!is_narrow(in) || (in == DType::kBF16 && capabilities().bfloat16_backward)) {
    backward_kernel(g, p, ctx);
    return;
  }
  const AttentionArgs& f = g.forward;
  detail::Widened w(ctx, {f.q, f.k, f.v, as_const(f.out), g.dout, as_const(g.dq), as_const(g.dk),
                          as_const(g.dv)});
  BackwardArgs b = g;
  b.forward.q = w.input(g.forward.q);
  b.forward.k = w.input(g.forward.k);
  b.forward.v = w.input(g.forward.v);
  b.forward.out = w.input(g.forward.out);  // the forward's out: read, not written
  b.dout = w.input(g.dout);
  b.dq = w.output(g.dq);
  b.dk = w.output(g.dk);
  b.dv = w.output(g.dv);
  backward_kernel(b, p, ctx);
  w.finish();
}

}  // namespace attnkit
