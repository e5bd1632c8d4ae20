// Random-feature projections (RFA / Performer), reproducible from a seed.
#include "attnkit/random.hpp"

#include <cmath>

namespace attnkit {

std::vector<double> random_features(uint64_t seed, int heads, int features, int dim,
                                    bool orthogonal) {
  const CounterRng rng(seed);
  std::vector<double> w(static_cast<size_t>(heads) * features * dim);
  for (int h = 0; h < heads; ++h) {
    double* wh = w.data() + static_cast<size_t>(h) * features * dim;
    const uint64_t stream = CounterRng::stream(0x52464121ull /*"RFA!"*/, h);
    for (int i = 0; i < features * dim; ++i) wh[i] = rng.normal(stream, i);
    if (!orthogonal) continue;
    // FAVOR+: Gram-Schmidt inside each block of `dim` rows, then give each row the
    // norm of an independent Gaussian vector so marginals stay N(0, I).
    for (int r = 0; r < features; ++r) {
      double* row = wh + static_cast<size_t>(r) * dim;
      const int block_start = r - r % dim;
      for (int p = block_start; p < r; ++p) {
        const double* prev = wh + static_cast<size_t>(p) * dim;
        double dot = 0;
        for (int i = 0; i < dim; ++i) dot += row[i] * prev[i];
        for (int i = 0; i < dim; ++i) row[i] -= dot * prev[i];
      }
      double norm = 0;
      for (int i = 0; i < dim; ++i) norm += row[i] * row[i];
      norm = std::sqrt(norm);
      for (int i = 0; i < dim; ++i) row[i] /= norm;
    }
    const uint64_t chi_stream = CounterRng::stream(0x43484921ull /*"CHI!"*/, h);
    for (int r = 0; r < features; ++r) {
      double chi2 = 0;
      for (int i = 0; i < dim; ++i) {
        const double g = rng.normal(chi_stream, static_cast<uint64_t>(r) * dim + i);
        chi2 += g * g;
      }
      const double chi = std::sqrt(chi2);
      for (int i = 0; i < dim; ++i) wh[static_cast<size_t>(r) * dim + i] *= chi;
    }
  }
  return w;
}

}  // namespace attnkit
