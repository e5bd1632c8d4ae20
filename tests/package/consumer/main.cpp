// Uses the installed attnkit: softmax attention on const inputs (make_view on const data),
// checked against a hand-computed uniform case.
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const std::vector<float> q(2 * 4, 0.0f), kv(3 * 4, 1.0f);  // equal logits: out = mean(v) = 1
  std::vector<float> out(2 * 4, 0.0f);
  attnkit::AttentionArgs a;
  a.q = attnkit::make_view(q.data(), {1, 2, 1, 4});
  a.k = attnkit::make_view(kv.data(), {1, 3, 1, 4});
  a.v = attnkit::make_view(kv.data(), {1, 3, 1, 4});
  a.out = attnkit::make_view(out.data(), {1, 2, 1, 4});
  attnkit::Context ctx(1);
  attnkit::make_mechanism("softmax")->forward(a, ctx);
  for (float x : out) {
    if (std::abs(x - 1.0f) > 1e-6f) return 1;
  }
  std::printf("attnkit %s consumer ok\n", attnkit::kVersion);
  return 0;
}
