// attnkit compare and bench: every mechanism against exact softmax on one shape, and one
// mechanism's time (forward, backward or a decode step) over sequence lengths.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <tuple>

#include "tools/attnkit/commands.hpp"

namespace attnkit::cli {
namespace {

double max_abs(const Tensor<float>& t) {
  double m = 0;
  for (float x : t.vec()) m = std::max(m, static_cast<double>(std::abs(x)));
  return m;
}

double max_abs_diff(const Tensor<float>& a, const Tensor<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, static_cast<double>(std::abs(a[i] - b[i])));
  return m;
}

// Multiply-adds of exact attention (QK^T and PV), counting only visible pairs (causal and
// the sliding window: query i at key position i + Sk - Sq).
double softmax_flops(const Shape& s, bool causal, std::pair<int64_t, int64_t> window) {
  double pairs = 0;
  for (int64_t i = 0; i < s.seq; ++i) {
    const int64_t p = i + s.sk() - s.seq;
    int64_t lo = window.first >= 0 ? p - window.first : 0, hi = s.sk();
    if (causal) hi = std::min(hi, p + 1);
    if (window.second >= 0) hi = std::min(hi, p + window.second + 1);
    pairs += static_cast<double>(std::max<int64_t>(0, hi - std::max<int64_t>(lo, 0)));
  }
  return 4.0 * s.dim * pairs * s.batch * s.heads;
}

using Row = std::vector<nlohmann::json>;

// One compare row: the mechanism's time, memory and error against softmax's output `base`.
Row compare_row(const Common& c, const CompareArgs& args, const Workload& w,
                const std::string& name, const Mechanism& m, const Tensor<float>& base,
                double base_scale, double& base_time) {
  Tensor<float> out, mem_out;
  AttentionArgs a = w.args(m, out, mem_out);
  apply_masks(c, a);
  Context ctx(c.threads);
  const int64_t peak = peak_memory_growth([&] { m.forward(a, ctx); });
  const Timing t = time_runs(args.warmup, args.reps, [&] { m.forward(a, ctx); });
  if (name == "softmax") base_time = t.median_s;
  const double err = max_abs_diff(out, base);
  return {name,
          t.median_s * 1e3,
          base_time > 0 ? nlohmann::json(t.median_s / base_time) : nlohmann::json(),
          peak < 0 ? nlohmann::json() : nlohmann::json(peak / 1048576.0),
          err,
          err / base_scale,
          m.describe() + mask_text(c),
          "ok"};
}

}  // namespace

int cmd_compare(const Common& c, const CompareArgs& args) {
  const std::vector<std::string> names =
      args.mechanisms.empty() ? mechanism_names() : args.mechanisms;
  check_configs(c, names);
  // A bad config is the user's error and ends the command; a mechanism that cannot take this
  // option (lara with --causal) is a skipped row, with the reason, and so is one that rejects
  // the shape when it runs.
  std::vector<std::unique_ptr<Mechanism>> mechanisms;
  std::vector<std::string> skipped(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    try {
      mechanisms.push_back(make(c, names[i]));
    } catch (const Error& e) {
      if (e.argument().rfind("config", 0) == 0 || e.argument() == "mechanism") throw;
      mechanisms.push_back(nullptr);
      skipped[i] = e.what();
    }
  }
  const Workload w(args.shape, args.seed);
  Tensor<float> base, base_mem;  // the baseline: exact softmax, fast kernel
  {
    Context ctx(c.threads);
    const auto softmax = make(c, "softmax");
    AttentionArgs a = w.args(*softmax, base, base_mem);
    apply_masks(c, a);
    softmax->forward(a, ctx);
  }
  const double base_scale = std::max(max_abs(base), 1e-30);
  double base_time = 0;
  Table table{{"mechanism", "time_ms", "vs_softmax", "peak_MiB", "max_abs_err", "rel_err", "config",
               "status"},
              {}};
  Progress progress(static_cast<int>(names.size()));
  for (size_t i = 0; i < names.size(); ++i) {
    progress.step(names[i]);
    if (mechanisms[i]) {
      try {
        table.rows.push_back(
            compare_row(c, args, w, names[i], *mechanisms[i], base, base_scale, base_time));
        continue;
      } catch (const Error& e) {
        skipped[i] = e.what();
      }
    }
    // One mechanism that cannot take this shape or option is reported; the rest still run.
    table.rows.push_back(
        {names[i], nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, "skipped: " + skipped[i]});
  }
  table.meta = run_meta("compare", threads_of(c));
  table.meta["shape"] = shape_json(args.shape, c.causal);
  add_mask_meta(c, table.meta);
  table.meta["reps"] = args.reps;
  std::cout << table.render(c.format);
  if (c.format == "table") {
    const Shape& s = args.shape;
    std::cout << "\nshape B=" << s.batch << " Sq=" << s.seq << " Sk=" << s.sk() << " Hq=" << s.heads
              << " Hk=" << s.hk() << " D=" << s.dim << (c.causal ? " causal" : " non-causal")
              << "; errors are against exact softmax (rel = max abs / max |softmax out|); "
              << "time is the median of " << args.reps << " runs; " << Context::cpu_report()
              << "\n";
  }
  return 0;
}

namespace {

// Streaming decode: after a context of n tokens, the median time of one step (append one
// token, query one token). For the KV cache, GB/s = cache bytes read per step.
void bench_decode(const Common& c, const BenchArgs& args, const std::string& name,
                  const std::vector<int64_t>& seqs, Context& ctx, Table& table) {
  const auto m = make(c, name);
  Shape s = args.shape;
  s.seq = 4096;
  s.kv_seq = 0;
  const Workload w(s, 1);  // appended in blocks of up to 4096 tokens
  const StreamSpec spec{
      .batch = s.batch,
      .heads = s.heads,
      .kv_heads = s.hk(),
      .head_dim = s.dim,
      .value_dim = s.dim,
      .memory = m->capabilities().needs_memory ? w.memory.cview() : ConstTensorView{},
      // A decode step is causal: --window's left side is the stream's ring.
      .window = window_of(c).first,
      .softcap = c.softcap};
  Tensor<float> out({s.batch, 1, s.heads, s.dim});
  auto rows = [](const Tensor<float>& t, int64_t from, int64_t count) {
    ConstTensorView v = t.cview();
    v.data = t.data() + from * v.stride[1];
    v.shape[1] = count;
    return v;
  };
  // Gated linear appends with the workload's gate logits [B, 4096, Hk].
  const bool gated = m->capabilities().uses_gate;
  auto append = [&](StreamingState& st, int64_t from, int64_t count) {
    if (!gated) return st.append(rows(w.k, from, count), rows(w.v, from, count), ctx);
    ConstTensorView g = w.gate.cview();
    g.data = w.gate.data() + from * g.stride[1];
    g.shape[1] = count;
    st.append_gated(rows(w.k, from, count), rows(w.v, from, count), g, ctx);
  };
  Progress progress(static_cast<int>(seqs.size()));
  for (int64_t n : seqs) {
    progress.step(name + " decode context=" + std::to_string(n));
    auto stream = m->new_stream(spec);
    for (int64_t done = 0; done < n;) {
      const int64_t t = std::min<int64_t>(4096, n - done);
      append(*stream, 0, t);
      done += t;
    }
    int64_t step = 0;
    const Timing t = time_runs(args.warmup, args.reps, [&] {
      const int64_t i = step++ % 4096;
      append(*stream, i, 1);
      stream->query(rows(w.q, i, 1), out.view(), ctx);
    });
    // Bytes a step reads: the whole fixed-size state, or for a KV cache its filled part.
    // (a windowed stream's ring is its state).
    const double bytes =
        m->capabilities().kv_cache && spec.window < 0
            ? static_cast<double>(stream->length()) * s.batch * s.hk() * 2 * s.dim * sizeof(float)
            : static_cast<double>(stream->state_bytes());
    table.rows.push_back({m->describe() + mask_text(c), "decode step (append 1 + query 1)", n,
                          t.median_s * 1e6, t.min_s * 1e6,
                          static_cast<int64_t>(stream->state_bytes()), bytes / t.median_s / 1e9});
  }
}

DType narrow_dtype(const BenchArgs& args) {
  return args.dtype == "bfloat16"  ? DType::kBF16
         : args.dtype == "float16" ? DType::kF16
                                   : DType::kF32;
}

// The forward (or backward) of one mechanism at sequence length n: {timing, flops factor}.
Timing time_pass(const Common& c, const BenchArgs& args, const Mechanism& m, int64_t n,
                 Context& ctx) {
  Shape s = args.shape;
  s.seq = n;
  s.kv_seq = 0;
  const Workload w(s, 1);
  Tensor<float> out, mem_out;
  AttentionArgs a = w.args(m, out, mem_out);
  apply_masks(c, a);
  // --dtype bfloat16 / float16: the same inputs stored narrow, out written narrow (as a
  // model's layer would); the row names the path they take.
  const DType dt = narrow_dtype(args);
  std::vector<uint16_t> q16, k16, v16, out16;
  if (is_narrow(dt)) {
    for (auto [src, dst, view] :
         {std::tuple{&w.q, &q16, &a.q}, {&w.k, &k16, &a.k}, {&w.v, &v16, &a.v}}) {
      for (float x : src->vec()) dst->push_back(to_narrow_bits(x, dt));
      view->data = dst->data();
      view->dtype = dt;
    }
    out16.resize(out.size());
    a.out.data = out16.data(), a.out.dtype = dt;
  }
  if (!args.backward) return time_runs(args.warmup, args.reps, [&] { m.forward(a, ctx); });
  // Gradients of sum(out * dout) for a fixed dout (the workload's q, a unit-scale array).
  // softmax keeps the forward's lse, as a training step would.
  Tensor<float> lse;
  if (m.name() == "softmax") {
    lse = Tensor<float>({s.batch, s.heads, n});
    a.lse = lse.view();
  }
  m.forward(a, ctx);
  Tensor<float> dq(w.q.shape()), dk(w.k.shape()), dv(w.v.shape()), dmem;
  BackwardArgs g{
      .forward = a, .dout = w.q.cview(), .dq = dq.view(), .dk = dk.view(), .dv = dv.view()};
  if (a.memory.present()) {
    dmem = Tensor<float>(w.memory.shape());
    g.dmemory = dmem.view();
  }
  // Narrow: dout and the gradients narrow too (a bfloat16 / float16 training step's).
  std::vector<uint16_t> grads16[3];
  if (is_narrow(dt)) {
    g.dout = a.q;  // the workload's q, as above
    TensorView* views[] = {&g.dq, &g.dk, &g.dv};
    for (int i = 0; i < 3; ++i) {
      grads16[i].resize(static_cast<size_t>(views[i]->shape[0] * views[i]->shape[1] *
                                            views[i]->shape[2] * views[i]->shape[3]));
      views[i]->data = grads16[i].data(), views[i]->dtype = dt;
    }
  }
  return time_runs(args.warmup, args.reps, [&] { m.backward(g, ctx); });
}

}  // namespace

int cmd_bench(const Common& c, const BenchArgs& args) {
  const std::vector<int64_t> seqs = parse_int_list(args.seqs, "--seq", 1, int64_t{1} << 24);
  check_configs(c, args.mechanisms);
  if (args.decode && (args.backward || args.dtype != "float32"))
    throw Error("--decode", "times a float32 streaming step; drop --backward and --dtype");
  Context ctx(c.threads);
  Table table;
  if (args.decode) {
    table.columns = {"mechanism", "measures",    "context", "median_us",
                     "min_us",    "state_bytes", "GB/s"};
    for (const std::string& name : args.mechanisms) bench_decode(c, args, name, seqs, ctx, table);
  } else {
    const std::string what = args.backward ? "backward (dq, dk, dv)" : "forward";
    table.columns = {"mechanism", "measures", "seq", "median_ms", "min_ms", "GFLOP/s", "Mtokens/s"};
    for (const std::string& name : args.mechanisms) {
      const auto m = make(c, name);
      // Narrow rows name the path their products take ("bf16 amx"; "bf16 fp32", "fp16
      // fp32": on float32 copies).
      const DType dt = narrow_dtype(args);
      // A bfloat16 backward runs on bfloat16 products only on the tiles (amx, amx-emulated).
      const std::string path = Context::bf16_path();
      const bool own = dt == DType::kBF16 && m->capabilities().bf16_path &&
                       (!args.backward || path.rfind("amx", 0) == 0);
      const std::string bf16_text = !is_narrow(dt) ? ""
                                                   : (dt == DType::kBF16 ? " bf16 " : " fp16 ") +
                                                         (own ? path : std::string("fp32"));
      Progress progress(static_cast<int>(seqs.size()));
      for (int64_t n : seqs) {
        progress.step(name + " seq=" + std::to_string(n));
        const Timing t = time_pass(c, args, *m, n, ctx);
        Shape s = args.shape;
        s.seq = n;
        s.kv_seq = 0;
        // FlashAttention's convention: a backward is 2.5 forwards (5 matmul-sized products
        // against 2). GFLOP/s is defined for exact softmax only (others do other work).
        const double flops = softmax_flops(s, c.causal, window_of(c)) * (args.backward ? 2.5 : 1.0);
        table.rows.push_back(
            {m->describe() + mask_text(c) + bf16_text, what, n, t.median_s * 1e3, t.min_s * 1e3,
             name == "softmax" ? nlohmann::json(flops / t.median_s / 1e9) : nlohmann::json(),
             static_cast<double>(s.batch * n) / t.median_s / 1e6});
      }
    }
  }
  table.meta = run_meta(args.decode ? "bench --decode" : "bench", ctx.num_threads());
  table.meta["shape"] = shape_json(args.shape, c.causal);
  add_mask_meta(c, table.meta);
  table.meta["shape"].erase("seq_q");
  table.meta["shape"].erase("seq_k");
  table.meta["warmup"] = args.warmup;
  table.meta["reps"] = args.reps;
  std::cout << table.render(c.format);
  if (c.format == "table") {
    std::cout << "\nB=" << args.shape.batch << " H=" << args.shape.heads << " D=" << args.shape.dim
              << " threads=" << ctx.num_threads() << " warmup=" << args.warmup
              << " reps=" << args.reps << "; "
              << (args.decode ? "GB/s = bytes read per step (state, or filled KV cache) / step "
                                "time; "
                              : "")
              << Context::cpu_report() << "\n";
  }
  return 0;
}

}  // namespace attnkit::cli
