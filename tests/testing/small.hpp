// Hand-written tiny problems for the reference closed-form tests: one batch, one head.
#pragma once

#include <vector>

#include "attnkit/attnkit.hpp"

namespace attnkit::testing {

// q: rows of Dk, k: rows of Dk, v: rows of Dv (one batch, one head).
struct Small {
  Tensor<double> q, k, v, out, memory, memory_out;
  Small(const std::vector<std::vector<double>>& qs, const std::vector<std::vector<double>>& ks,
        const std::vector<std::vector<double>>& vs)
      : q(load(qs)),
        k(load(ks)),
        v(load(vs)),
        out({1, static_cast<int64_t>(qs.size()), 1, static_cast<int64_t>(vs[0].size())}) {}
  void set_memory(const std::vector<std::vector<double>>& ms) {
    memory = load(ms);
    memory_out =
        Tensor<double>({1, static_cast<int64_t>(ms.size()), 1, static_cast<int64_t>(v.shape()[3])});
  }
  AttentionArgs args() {
    AttentionArgs a;
    a.q = q.cview();
    a.k = k.cview();
    a.v = v.cview();
    a.out = out.view();
    if (memory.size()) {
      a.memory = memory.cview();
      a.memory_out = memory_out.view();
    }
    return a;
  }
  // out row i, entry d.
  double o(int64_t i, int64_t d) const { return out[i * out.shape()[3] + d]; }

  static Tensor<double> load(const std::vector<std::vector<double>>& rows) {
    Tensor<double> t(
        {1, static_cast<int64_t>(rows.size()), 1, static_cast<int64_t>(rows[0].size())});
    for (size_t i = 0; i < rows.size(); ++i)
      for (size_t d = 0; d < rows[i].size(); ++d) t[i * rows[0].size() + d] = rows[i][d];
    return t;
  }
};

}  // namespace attnkit::testing
