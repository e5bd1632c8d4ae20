// luna: nested pack/unpack attention through a memory (SPEC 4.1), causal and not.
// float32 non-causal: pack = softmax kernel with the memory as queries, unpack = softmax
// kernel over the packed memory (tied keys = values). float32 causal: the running-average
// kernel (src/cpu/luna.cpp), also the streaming form. float64 runs the reference.
#include <cmath>
#include <memory>

#include "src/cpu/kernels.hpp"
#include "src/mechanisms/linear_stream.hpp"
#include "src/mechanisms/registry.hpp"
#include "src/mechanisms/validate.hpp"
#include "src/reference/reference.hpp"

namespace attnkit::detail {
namespace {

class Luna final : public Mechanism {
 public:
  using Mechanism::Mechanism;
  std::string_view name() const override { return "luna"; }
  Capabilities capabilities() const override {
    return {.causal = true, .streaming = true, .backward = true, .needs_memory = true};
  }

  void validate_backward(const BackwardArgs& g) const override {
    validate(g.forward);
    const DType dt = input_dtype(g.forward);
    check_backward(g, dt);
    check_input_gradient(g, g.dmemory, "dmemory", g.forward.memory, "memory", compute_dtype(dt));
  }
  void backward_reference(const BackwardArgs& g, const Problem&) const override {
    ref::luna_backward_ref(g, options());
  }
  void backward_kernel(const BackwardArgs& g, const Problem& p, Context& ctx) const override {
    if (p.causal) {
      cpu::luna_causal_backward(g, p, ctx);
    } else {
      noncausal_backward(g, static_cast<float>(p.scale), ctx);
    }
  }
  // Causal running-average state per (batch, q head): L x Dv sums and the step count.
  std::unique_ptr<StreamingState> new_stream(const StreamSpec& s) const override {
    check_stream_spec(s);
    if (s.head_dim != s.value_dim)
      throw Error("stream", "luna needs head_dim == value_dim (tied unpack)");
    const auto mem = copy_stream_memory(s);
    const float sc = logit_scale(options(), s.head_dim);
    const ConstTensorView mv = mem->cview();
    return make_state([&] {
      return std::make_unique<FixedStateStream>(
          s,
          cpu::LinearState(s.batch, s.heads, s.memory.shape[1], s.value_dim, /*log_space=*/false),
          [mv, sc](auto& st, auto& k, auto& v, auto&, Context& ctx) {
            cpu::luna_append(st, k, v, mv, sc, ctx);
          },
          [mv, sc](auto& st, auto& q, auto& out, Context& ctx) {
            cpu::luna_query(st, q, out, mv, sc, ctx);
          },
          mem);
    });
  }

 protected:
  void validate(const AttentionArgs& a) const override {
    const DType dt = input_dtype(a);
    const Shape sh = check_qkv(a, dt);
    check_memory_args(a, sh, compute_dtype(dt));
  }
  void run_reference(const AttentionArgs& a, const Problem&) const override {
    ref::luna_ref(a, options());
  }
  void run_kernel(const AttentionArgs& a, const Problem& p, Context& ctx) const override {
    if (p.causal) {
      cpu::luna_causal_forward(a, p, ctx);
      return;
    }
    const float s = static_cast<float>(p.scale);
    // Pack: the memory attends over the sequence.
    Tensor<float> packed;
    AttentionArgs pack;
    pack.q = a.memory;
    pack.k = a.k;
    pack.v = a.v;
    pack.key_lengths = a.key_lengths;
    if (a.memory_out.present()) {
      pack.out = a.memory_out;
    } else {
      packed =
          Tensor<float>({a.memory.shape[0], a.memory.shape[1], a.memory.shape[2], a.v.shape[3]});
      pack.out = packed.view();
    }
    cpu::softmax_forward(pack, plain(pack, s), ctx);
    // Unpack: the sequence attends over the packed memory (keys = values).
    AttentionArgs unpack;
    unpack.q = a.q;
    unpack.k = pack.out;
    unpack.v = pack.out;
    unpack.out = a.out;
    cpu::softmax_forward(unpack, plain(unpack, s), ctx);
  }

 private:
  // The problem of a pack or unpack step: non-causal softmax at Luna's scale.
  static Problem plain(const AttentionArgs& a, float s) {
    return Problem::resolve(a, {.scale = s, .causal = false});
  }
  // The two softmax kernels' backwards in reverse order: unpack (keys = values = packed
  // memory Yp, so dYp = dk + dv), then pack (queries = memory, so dq = dmemory).
  static void noncausal_backward(const BackwardArgs& g, float s, Context& ctx) {
    const AttentionArgs& a = g.forward;
    const int64_t B = a.q.shape[0], L = a.memory.shape[1], Hq = a.q.shape[2];
    const int64_t Dk = a.q.shape[3], Dv = a.v.shape[3];
    Tensor<float> packed({B, L, Hq, Dv}), dk_u({B, L, Hq, Dv}), dv_u({B, L, Hq, Dv}), dmem;
    AttentionArgs pack;
    pack.q = a.memory;
    pack.k = a.k;
    pack.v = a.v;
    pack.out = packed.view();
    pack.key_lengths = a.key_lengths;
    cpu::softmax_forward(pack, plain(pack, s), ctx);
    AttentionArgs unpack;
    unpack.q = a.q;
    unpack.k = packed.cview();
    unpack.v = packed.cview();
    unpack.out = a.out;
    cpu::softmax_backward(
        {.forward = unpack, .dout = g.dout, .dq = g.dq, .dk = dk_u.view(), .dv = dv_u.view()},
        plain(unpack, s), ctx);
    for (size_t x = 0; x < dk_u.vec().size(); ++x) dk_u.vec()[x] += dv_u.vec()[x];
    TensorView dmemory = g.dmemory;
    if (!dmemory.present()) {
      dmem = Tensor<float>({B, L, Hq, Dk});
      dmemory = dmem.view();
    }
    cpu::softmax_backward(
        {.forward = pack, .dout = dk_u.cview(), .dq = dmemory, .dk = g.dk, .dv = g.dv},
        plain(pack, s), ctx);
  }
};

}  // namespace

std::unique_ptr<Mechanism> make_luna(const AttentionOptions& o, KeyValues&) {
  return std::make_unique<Luna>(o);
}

}  // namespace attnkit::detail
