// Bad input gets an Error naming the argument and the rule, never a crash.
#include <cmath>
#include <limits>

#include "tests/testing/harness.hpp"

namespace attnkit::testing {
namespace {

class Validation : public ::testing::Test {
 protected:
  Context ctx{1};
  Problem p{{2, 4, 6, 4, 2, 8, 8}, 1};
  std::unique_ptr<Mechanism> softmax = make_mechanism("softmax");
  std::string run(AttentionArgs a) {
    return error_of([&] { softmax->forward(a, ctx); });
  }
};

TEST_F(Validation, Shapes) {
  AttentionArgs a = p.args32();
  a.k.shape[2] = 3;
  EXPECT_EQ(run(a), "k: heads (3) must divide q heads (4)");
  a = p.args32();
  a.k.shape[3] = 7;
  EXPECT_EQ(run(a), "k: head_dim (7) must equal q head_dim (8)");
  a = p.args32();
  a.v.shape[1] = 5;
  EXPECT_EQ(run(a), "v: seq (5) must equal k seq (6)");
  a = p.args32();
  a.out.shape[3] = 4;
  EXPECT_EQ(run(a), "out: head_dim (4) must be 8 (shape [B, Sq, Hq, Dv] = [2, 4, 4, 8])");
  a = p.args32();
  a.q.rank = 3;
  EXPECT_EQ(run(a), "q: must have rank 4, got 3");
  a = p.args32();
  a.k.shape[0] = 1;
  EXPECT_EQ(run(a), "k: batch (1) must equal q batch (2)");
  a = p.args32();
  a.q.shape[3] = 5000;
  EXPECT_EQ(run(a), "q: head_dim (5000) must be <= 1024");
  a = p.args32();
  a.q.shape[1] = int64_t{1} << 40;
  EXPECT_EQ(run(a), "q: seq (1099511627776) must be < 2^31");
}

TEST_F(Validation, StridesDtypesAndPointers) {
  AttentionArgs a = p.args32();
  a.q.stride[3] = 2;
  EXPECT_EQ(run(a), "q: last dimension must be contiguous (stride 1), got stride 2");
  a = p.args32();
  a.k.stride[1] = -8;
  EXPECT_EQ(run(a), "k: stride of seq (-8) must be >= 0");
  a = p.args32();
  a.v.dtype = DType::kF64;
  EXPECT_EQ(run(a), "v: must be float32, got float64");
  a = p.args32();
  a.q.data = nullptr;
  EXPECT_EQ(run(a), "q: data pointer is null");
  a = p.args32();
  a.out = TensorView{};
  EXPECT_EQ(run(a), "out: is required");
  a = p.args32();
  a.out.data = const_cast<void*>(a.q.data);
  EXPECT_EQ(run(a), "out: must not overlap q");
}

TEST_F(Validation, NonFiniteInputs) {
  p.k.f32[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(run(p.args32()), "k: must be finite (found NaN or Inf)");
  p.k.f32[5] = 0;
  p.v.f32[0] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(run(p.args32()), "v: must be finite (found NaN or Inf)");
}

TEST_F(Validation, OptionalArguments) {
  AttentionArgs a = p.args32();
  const int32_t bad[] = {6, 7};
  a.key_lengths = bad;
  EXPECT_EQ(run(a), "key_lengths: entry 1 (7) must be in [0, 6]");
  const int32_t one[] = {3};
  a.key_lengths = one;
  EXPECT_EQ(run(a), "key_lengths: must have one entry per batch (2), got 1");
  a = p.args32();
  std::vector<float> lse(10);
  a.lse = make_view(lse.data(), {2, 5});
  EXPECT_EQ(run(a), "lse: must have rank 3, got 2");
  a = p.args32();
  a.gate = p.q.view32();
  EXPECT_EQ(run(a), "gate: is not used by softmax");
  // Mechanisms that need extra inputs say so.
  EXPECT_EQ(error_of([&] { make_mechanism("luna")->forward(p.args32(), ctx); }),
            "memory: is required");
  EXPECT_EQ(error_of([&] { make_mechanism("linear", {}, "gated=1")->forward(p.args32(), ctx); }),
            "gate: is required");
  EXPECT_EQ(error_of([&] { make_mechanism("memory")->forward(p.args32(), ctx); }),
            "k: seq (6) must equal q seq (4): chunks cut queries and keys alike");
}

TEST_F(Validation, CheckReportsWithoutThrowing) {
  AttentionArgs a = p.args32();
  EXPECT_EQ(softmax->check(a), "");
  a.k.shape[2] = 3;
  EXPECT_EQ(softmax->check(a), "k: heads (3) must divide q heads (4)");
}

TEST_F(Validation, EmptySizes) {
  Problem e({1, 0, 5, 1, 1, 4, 4}, 2);
  EXPECT_EQ(run(e.args32()), "no error");  // no queries: nothing to do
  Problem z({1, 3, 0, 1, 1, 4, 4}, 3);
  EXPECT_EQ(run(z.args32()), "no error");  // no keys: zeros
  for (float x : z.out.f32) EXPECT_EQ(x, 0.0f);
  Problem h({1, 3, 3, 1, 1, 0, 4}, 4);
  EXPECT_EQ(run(h.args32()), "q: head_dim must be >= 1");
}

TEST_F(Validation, StreamingArguments) {
  auto s =
      softmax->new_stream({.batch = 2, .heads = 4, .kv_heads = 2, .head_dim = 8, .value_dim = 8});
  EXPECT_EQ(error_of([&] { s->append(p.q.view32(), p.v.view32(), ctx); }),
            "k: shape [2, 4, 4, 8] must be [2, T, 2, 8]");
  EXPECT_EQ(error_of([&] { make_mechanism("lara")->new_stream({}); }),
            "stream: lara has no streaming form");
  EXPECT_EQ(error_of([&] { make_mechanism("linear")->new_stream({}); }),
            "stream: batch, heads, kv_heads, head_dim and value_dim must be >= 1");
}

}  // namespace
}  // namespace attnkit::testing
