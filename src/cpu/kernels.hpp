// Plain entry points of the fast CPU kernels. Each dispatches once per call to the
// best Highway target compiled in; callers have validated the arguments.
#pragma once

#include "attnkit/context.hpp"
#include "attnkit/mechanism.hpp"

namespace attnkit::cpu {

// Tiled online-softmax ("flash") attention, float32. q/k/v/out as in AttentionArgs;
// lse optional float32 [B, Hq, Sq]. O(B Hk Sk (Dk + Dv)) extra memory for packed K/V.
void softmax_forward(const AttentionArgs& a, float scale, bool causal, Context& ctx);

}  // namespace attnkit::cpu
