// The streaming state shared by the linear families (linear, heinsen, rfa/performer,
// luna): a fixed-size cpu::LinearState advanced by the mechanism's append and read by its
// query, so state_bytes() does not grow with the tokens appended.
#pragma once

#include <functional>
#include <memory>

#include "src/cpu/kernels.hpp"
#include "src/mechanisms/validate.hpp"

namespace attnkit::detail {

class FixedStateStream final : public StreamingState {
 public:
  // (state, k, v, gate or absent, ctx)
  using AppendFn = std::function<void(cpu::LinearState&, const ConstTensorView&,
                                      const ConstTensorView&, const ConstTensorView&, Context&)>;
  using QueryFn =
      std::function<void(cpu::LinearState&, const ConstTensorView&, const TensorView&, Context&)>;
  // keep_alive: data the functions point into (e.g. random projections). gated: every append
  // takes a gate (append_gated), none may go without.
  FixedStateStream(const StreamSpec& spec, cpu::LinearState state, AppendFn append, QueryFn query,
                   std::shared_ptr<const void> keep_alive = nullptr, bool gated = false)
      : spec_(spec),
        state_(std::move(state)),
        append_(std::move(append)),
        query_(std::move(query)),
        keep_alive_(std::move(keep_alive)),
        gated_(gated) {}

  void append(const ConstTensorView& k, const ConstTensorView& v, Context& ctx) override {
    if (gated_) {
      throw Error("gate",
                  "gated linear attention's stream needs a gate per token: "
                  "append_gated(k, v, gate)");
    }
    check_stream_append(spec_, k, v);
    if (k.shape[1] > 0) append_(state_, k, v, ConstTensorView{}, ctx);
  }
  void append_gated(const ConstTensorView& k, const ConstTensorView& v, const ConstTensorView& gate,
                    Context& ctx) override {
    if (!gated_) StreamingState::append_gated(k, v, gate, ctx);  // refuses it
    check_stream_append(spec_, k, v);
    check_stream_gate(spec_, k, gate);
    if (k.shape[1] > 0) append_(state_, k, v, gate, ctx);
  }
  void query(const ConstTensorView& q, const TensorView& out, Context& ctx) override {
    check_stream_query(spec_, q, out);
    if (q.shape[1] == 0) return;
    query_(state_, q, out, ctx);
    check_result(as_const(out), "out", AttentionArgs{.q = q});
  }
  size_t state_bytes() const override { return state_.bytes(); }
  int64_t length() const override { return state_.tokens; }

 private:
  StreamSpec spec_;
  cpu::LinearState state_;
  AppendFn append_;
  QueryFn query_;
  std::shared_ptr<const void> keep_alive_;
  bool gated_;
};

}  // namespace attnkit::detail
