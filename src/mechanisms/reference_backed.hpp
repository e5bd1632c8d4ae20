// Runs a float64 reference for float32 arguments (widen inputs, run, narrow outputs).
// Mechanisms whose fast kernel is not written yet use it, and say so through
// Capabilities::fast_kernel = false; float64 arguments always take the reference.
#pragma once

#include <functional>

#include "attnkit/mechanism.hpp"

namespace attnkit::detail {

void run_reference(const AttentionArgs& a, const std::function<void(const AttentionArgs&)>& ref);

// Copies of any-rank views between dtypes (float32 <-> float64), shapes equal.
Tensor<double> widen(const ConstTensorView& t);
void narrow(const Tensor<double>& src, const TensorView& dst);

}  // namespace attnkit::detail

namespace attnkit::detail {

// Base of a mechanism computed by its float64 reference (until its fast kernel lands).
class ReferenceBacked : public Mechanism {
 public:
  using Mechanism::Mechanism;

 protected:
  void run(const AttentionArgs& a, Context&) const override {
    run_reference(a, [this](const AttentionArgs& w) { reference(w); });
  }
  // a: float64 views.
  virtual void reference(const AttentionArgs& a) const = 0;
};

// float32 or float64, following q.
inline DType input_dtype(const AttentionArgs& a) {
  return a.q.present() && a.q.dtype == DType::kF64 ? DType::kF64 : DType::kF32;
}

}  // namespace attnkit::detail
