// Gradient checks shared by every mechanism with a backward pass (DESIGN.md section 5):
// the float64 reference backward against central finite differences of the float64
// forward, and the float32 kernel backward against the float64 reference backward.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tests/testing/harness.hpp"

namespace attnkit::testing {

// Shapes for backward kernel checks: beyond one state pad and one tile, GQA, Sq != Sk both
// ways (with key padding added by the caller).
std::vector<Dims> backward_dims();

// Adds inputs a Problem does not carry (e.g. a filter) to forward arguments; it sees the
// dtype in a.q.dtype.
using ArgsHook = std::function<void(AttentionArgs& a)>;

// For every element x[i]: grad[i] equals (loss() at x[i] + h - loss() at x[i] - h) / 2h,
// h = 1e-6, within tol * max(1, |fd|). x is restored after each probe.
void expect_matches_fd(std::vector<double>& x, const std::vector<double>& grad,
                       const std::function<double()>& loss, double tol, const std::string& what);

// For every element x of q, k, v (and memory when the Problem has one): the float64
// gradient of L = sum(out * dout) written by m.backward equals (L(x + h) - L(x - h)) / 2h
// within tol * max(1, |fd|). Keep problems tiny: two forwards per element.
void expect_fd_gradients(const Mechanism& m, const Problem& base, uint32_t seed, double tol = 1e-6,
                         const ArgsHook& hook = {});

// The float32 backward of m is within allowed(Budget{.c = ulps}, 0, max|ref|) =
// ulps * eps(float) * max(1, max|ref|) of the float64 backward per gradient, and bitwise the
// same for 1, 2 and 7 threads.
void expect_kernel_gradients(const Mechanism& m, const Problem& base, uint32_t seed,
                             double ulps = 64, const ArgsHook& hook = {});

}  // namespace attnkit::testing
