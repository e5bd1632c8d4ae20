// Counter-based random numbers: every draw is a pure function of
// (seed, stream, counter), so results do not depend on thread count or order,
// and the double-precision references reproduce the fast kernels' draws.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace attnkit {

// splitmix64 finaliser: a bijective 64-bit mixer.
constexpr uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

class CounterRng {
 public:
  constexpr explicit CounterRng(uint64_t seed) : seed_(mix64(seed)) {}
  // Stream ids are built from indices, e.g. stream(b, h, n).
  static constexpr uint64_t stream(uint64_t a, uint64_t b = 0, uint64_t c = 0) {
    return mix64(mix64(mix64(a) ^ b) ^ c);
  }
  constexpr uint64_t bits(uint64_t stream, uint64_t counter) const {
    return mix64(seed_ ^ mix64(stream ^ mix64(counter)));
  }
  // Uniform in (0, 1): never 0, so log() is safe.
  double uniform(uint64_t stream, uint64_t counter) const {
    return (static_cast<double>(bits(stream, counter) >> 11) + 0.5) * 0x1.0p-53;
  }
  // Standard normal (Box-Muller on two uniforms).
  double normal(uint64_t stream, uint64_t counter) const {
    const double u1 = uniform(stream, 2 * counter);
    const double u2 = uniform(stream, 2 * counter + 1);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  uint64_t seed_;
};

// Random-feature projections for RFA/Performer: `heads` matrices of shape
// [features, dim], row-major, entries ~ N(0, 1); with `orthogonal`, each block
// of `dim` rows is orthogonalised and rescaled by chi(dim) norms (FAVOR+).
std::vector<double> random_features(uint64_t seed, int heads, int features, int dim,
                                    bool orthogonal);

}  // namespace attnkit
