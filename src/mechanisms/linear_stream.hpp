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
  using AppendFn = std::function<void(cpu::LinearState&, const ConstTensorView&,
                                      const ConstTensorView&, Context&)>;
  using QueryFn =
      std::function<void(cpu::LinearState&, const ConstTensorView&, const TensorView&, Context&)>;
  // keep_alive: data the functions point into (e.g. random projections).
  FixedStateStream(const StreamSpec& spec, cpu::LinearState state, AppendFn append, QueryFn query,
                   std::shared_ptr<const void> keep_alive = nullptr)
      : spec_(spec),
        state_(std::move(state)),
        append_(std::move(append)),
        query_(std::move(query)),
        keep_alive_(std::move(keep_alive)) {}

  void append(const ConstTensorView& k, const ConstTensorView& v, Context& ctx) override {
    check_stream_append(spec_, k, v);
    if (k.shape[1] > 0) append_(state_, k, v, ctx);
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
};

}  // namespace attnkit::detail
