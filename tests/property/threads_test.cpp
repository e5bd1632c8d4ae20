// Every (heads, threads) pair up to 32 x 32, for every mechanism's forward, backward and
// stream: no out-of-bounds work split (ASan builds catch a write past a buffer) and the
// same bits as one thread. The pool's serial threshold is off, so even these small
// problems are split over every thread.
#include <memory>

#include "tests/testing/harness.hpp"

namespace attnkit::testing {
namespace {

constexpr int kMax = 32;

std::vector<std::unique_ptr<Context>> contexts() {
  std::vector<std::unique_ptr<Context>> c;
  for (int t = 1; t <= kMax; ++t) {
    c.push_back(std::make_unique<Context>(t));
    c.back()->set_min_parallel_work(0);
  }
  return c;
}

struct Case {
  std::string name, config;
};
const Case kCases[] = {{"softmax", ""},
                       {"linear", "map=elu1,norm=kernel,chunk=8"},
                       {"heinsen", ""},
                       {"rfa", "features=8"},
                       {"performer", "features=8"},
                       {"ra", ""},
                       {"lara", "landmarks=4"},
                       {"topk", "k=5,query_chunk=7"},
                       {"luna", ""},
                       {"memory", "chunk=8,width=2"}};

Problem problem(const Mechanism& m, int64_t heads) {
  const int64_t memory = m.capabilities().needs_memory ? 3 : 0;
  Problem p({2, 19, 19, heads, heads, 8, 8}, static_cast<uint32_t>(heads), Layout::kContiguous,
            memory);
  p.key_lengths = {19, 11};
  return p;
}

TEST(ThreadsProperty, EveryHeadsThreadsPairForwardAndBackward) {
  auto ctx = contexts();
  for (const Case& c : kCases) {
    const auto noncausal = make_mechanism(c.name, {}, c.config);
    const bool causal = noncausal->capabilities().causal;
    const auto m = make_mechanism(c.name, {.causal = causal}, c.config);
    for (int64_t heads = 1; heads <= kMax; ++heads) {
      SCOPED_TRACE(m->describe() + " heads=" + std::to_string(heads));
      Problem base = problem(*m, heads);
      Problem one = base;
      m->forward(one.args32(), *ctx[0]);
      Grads g1(base, 5);
      if (m->capabilities().backward) m->backward(g1.args32(one), *ctx[0]);
      for (int t = 2; t <= kMax; ++t) {
        Problem p = base;
        m->forward(p.args32(), *ctx[t - 1]);
        ASSERT_EQ(p.out.f32, one.out.f32) << t << " threads";
        if (!m->capabilities().backward) continue;
        Grads g(base, 5);
        m->backward(g.args32(p), *ctx[t - 1]);
        ASSERT_EQ(g.all32(), g1.all32()) << t << " threads, backward";
      }
    }
  }
}

TEST(ThreadsProperty, EveryHeadsThreadsPairStreams) {
  auto ctx = contexts();
  for (const Case& c : kCases) {
    const auto m = make_mechanism(c.name, {}, c.config);
    if (!m->capabilities().streaming) continue;
    for (int64_t heads = 1; heads <= kMax; ++heads) {
      SCOPED_TRACE(m->describe() + " heads=" + std::to_string(heads));
      Problem p = problem(*m, heads);
      StreamSpec spec{.batch = 2, .heads = heads, .kv_heads = heads, .head_dim = 8, .value_dim = 8};
      if (m->capabilities().needs_memory) spec.memory = p.memory.view32();
      std::vector<float> first;
      for (int t = 1; t <= kMax; ++t) {
        auto s = m->new_stream(spec);
        s->append(p.k.view32(), p.v.view32(), *ctx[t - 1]);
        std::vector<float> out(2 * 19 * heads * 8);
        s->query(p.q.view32(), make_view(out.data(), {2, 19, heads, 8}), *ctx[t - 1]);
        if (t == 1) first = out;
        ASSERT_EQ(out, first) << t << " threads";
      }
    }
  }
}

}  // namespace
}  // namespace attnkit::testing
