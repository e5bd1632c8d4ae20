#include "tests/testing/gradients.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

namespace attnkit::testing {

std::vector<Dims> backward_dims() {
  return {Dims{1, 70, 70, 2, 2, 32, 32}, Dims{2, 33, 90, 4, 2, 16, 24},
          Dims{1, 90, 40, 3, 1, 20, 8}, Dims{1, 300, 200, 2, 1, 24, 16}};
}

namespace {

AttentionArgs hooked(AttentionArgs a, const ArgsHook& hook) {
  if (hook) hook(a);
  return a;
}
BackwardArgs hooked(BackwardArgs g, const ArgsHook& hook) {
  if (hook) hook(g.forward);
  return g;
}

}  // namespace

void expect_matches_fd(std::vector<double>& x, const std::vector<double>& grad,
                       const std::function<double()>& loss, double tol, const std::string& what) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i], h = 1e-6;
    x[i] = keep + h;
    const double up = loss();
    x[i] = keep - h;
    const double down = loss();
    x[i] = keep;
    const double fd = (up - down) / (2 * h);
    EXPECT_NEAR(grad[i], fd, tol * std::max(1.0, std::abs(fd))) << what << " [" << i << "]";
  }
}

void expect_fd_gradients(const Mechanism& m, const Problem& base, uint32_t seed, double tol,
                         const ArgsHook& hook) {
  Context ctx(1);
  Problem p = base;
  Grads g(p, seed);
  auto loss = [&] {
    m.forward(hooked(p.args64(), hook), ctx);
    double l = 0;
    for (size_t i = 0; i < g.dout.f64.size(); ++i) l += g.dout.f64[i] * p.out.f64[i];
    return l;
  };
  m.forward(hooked(p.args64(), hook), ctx);
  m.backward(hooked(g.args64(p), hook), ctx);
  const std::string where = m.describe() + " " + to_string(p.d);
  auto check = [&](std::vector<double>& x, const std::vector<double>& grad, const char* what) {
    expect_matches_fd(x, grad, loss, tol, what + (" " + where));
  };
  check(p.q.f64, g.dq.f64, "dq");
  check(p.k.f64, g.dk.f64, "dk");
  check(p.v.f64, g.dv.f64, "dv");
  if (!p.memory.f64.empty()) check(p.memory.f64, g.dmemory.f64, "dmemory");
}

void expect_kernel_gradients(const Mechanism& m, const Problem& base, uint32_t seed, double ulps,
                             const ArgsHook& hook) {
  Problem r = base;
  Grads gr(r, seed);
  {
    Context ctx(1);
    m.forward(hooked(r.args64(), hook), ctx);
    m.backward(hooked(gr.args64(r), hook), ctx);
  }
  std::vector<float> first;
  for (int threads : {1, 2, 7}) {
    Context ctx(threads);
    Problem p = base;
    Grads g(p, seed);
    m.forward(hooked(p.args32(), hook), ctx);
    m.backward(hooked(g.args32(p), hook), ctx);
    if (first.empty()) {
      for (auto [got, want, name] : {std::tuple{&g.dq, &gr.dq, "dq"},
                                     {&g.dk, &gr.dk, "dk"},
                                     {&g.dv, &gr.dv, "dv"},
                                     {&g.dmemory, &gr.dmemory, "dmemory"}}) {
        if (want->f64.empty()) continue;
        const Report rep = compare(*got, true, *want);
        // DESIGN.md section 5's rule with the float64 reference backward as the naive one,
        // so only the c * eps(float) * scale term remains.
        EXPECT_LE(rep.max_abs, allowed(Budget{.c = ulps}, 0.0, rep.ref_max))
            << name << " " << rep.str() << " " << m.describe() << " " << to_string(p.d);
      }
      first = g.all32();
    } else {
      EXPECT_EQ(g.all32(), first) << threads << " threads, " << m.describe();
    }
  }
}

}  // namespace attnkit::testing
