#include "tools/attnkit/commands.hpp"

#include <algorithm>
#include <cmath>
#include <iostream>
#include <tuple>

#include "src/io/npy.hpp"

namespace attnkit::cli {
namespace {

// The config text given for `name` by --config name:key=value,... (empty if none).
std::string config_for(const Common& c, const std::string& name) {
  for (const std::string& s : c.configs) {
    const size_t colon = s.find(':');
    if (colon == std::string::npos)
      throw Error("--config", "'" + s + "' must be name:key=value,...");
    if (s.substr(0, colon) == name) return s.substr(colon + 1);
  }
  return "";
}

AttentionOptions options_of(const Common& c) { return {.scale = c.scale, .causal = c.causal}; }

// An npy array as a [B, S, H, D] view: rank 2 is [S, D], rank 3 [S, H, D].
ConstTensorView as_bshd(const Tensor<float>& t, const std::string& name) {
  const auto& s = t.shape();
  ConstTensorView v = t.view();
  if (s.size() < 2 || s.size() > 4) {
    throw Error(name,
                "npy rank must be 2 ([seq, dim]), 3 ([seq, heads, dim]) or 4 ([batch, seq, heads, "
                "dim]), got " +
                    std::to_string(s.size()));
  }
  std::array<int64_t, 4> shape{1, 1, 1, 1};
  if (s.size() == 2) shape = {1, s[0], 1, s[1]};
  if (s.size() == 3) shape = {1, s[0], s[1], s[2]};
  if (s.size() == 4) shape = {s[0], s[1], s[2], s[3]};
  v.rank = 4;
  v.shape = shape;
  v.stride = {shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1};
  return v;
}

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

// Multiply-adds of exact attention (QK^T and PV), counting only visible pairs.
double softmax_flops(const Shape& s, bool causal) {
  double pairs = 0;
  for (int64_t i = 0; i < s.seq; ++i)
    pairs += static_cast<double>(visible_keys(causal, s.seq, s.sk(), s.sk(), i));
  return 4.0 * s.dim * pairs * s.batch * s.heads;
}

}  // namespace

int cmd_run(const Common& c, const RunArgs& r) {
  const auto m = make_mechanism(r.mechanism, options_of(c), config_for(c, r.mechanism));
  const Tensor<float> q = io::read_npy(r.q), k = io::read_npy(r.k), v = io::read_npy(r.v);
  AttentionArgs a;
  a.q = as_bshd(q, r.q);
  a.k = as_bshd(k, r.k);
  a.v = as_bshd(v, r.v);
  std::vector<int64_t> out_shape = q.shape();
  out_shape.back() = a.v.shape[3];
  Tensor<float> out(out_shape), memory, memory_out, gate;
  a.out = out.view();
  a.out.rank = 4;
  a.out.shape = {a.q.shape[0], a.q.shape[1], a.q.shape[2], a.v.shape[3]};
  a.out.stride = {a.out.shape[1] * a.out.shape[2] * a.out.shape[3], a.out.shape[2] * a.out.shape[3],
                  a.out.shape[3], 1};
  if (!r.memory.empty()) {
    memory = io::read_npy(r.memory);
    a.memory = as_bshd(memory, r.memory);
    memory_out = Tensor<float>(memory.shape());
    a.memory_out = memory_out.view();
    a.memory_out.rank = 4;
    a.memory_out.shape = a.memory.shape;
    a.memory_out.stride = a.memory.stride;
  }
  if (!r.gate.empty()) {
    gate = io::read_npy(r.gate);
    a.gate = gate.view();
  }
  std::vector<int32_t> lengths;
  if (!r.key_lengths.empty()) {
    for (int64_t x : parse_int_list(r.key_lengths, "--key-lengths"))
      lengths.push_back(static_cast<int32_t>(x));
    a.key_lengths = lengths;
  }
  Context ctx(c.threads);
  const Timing t = time_runs(0, 1, [&] { m->forward(a, ctx); });
  io::write_npy(r.out, out.data(), out.shape());
  if (!r.memory_out.empty()) {
    if (r.memory.empty()) throw Error("--memory-out", "needs --memory");
    io::write_npy(r.memory_out, memory_out.data(), memory_out.shape());
  }
  std::cerr << m->describe() << ": wrote " << r.out << " in " << fmt(t.median_s * 1e3) << " ms\n";
  return 0;
}

int cmd_compare(const Common& c, const CompareArgs& args) {
  std::vector<std::string> names = args.mechanisms.empty() ? mechanism_names() : args.mechanisms;
  const Workload w(args.shape, args.seed);
  const AttentionOptions opts = options_of(c);
  // Baseline: exact softmax, fast kernel.
  Tensor<float> base, base_mem;
  {
    Context ctx(c.threads);
    const auto softmax = make_mechanism("softmax", opts, config_for(c, "softmax"));
    softmax->forward(w.args(*softmax, base, base_mem), ctx);
  }
  const double base_scale = std::max(max_abs(base), 1e-30);
  double base_time = 0;
  Table table{{"mechanism", "kernel", "time_ms", "vs_softmax", "peak_MiB", "max_abs_err", "rel_err",
               "config"},
              {}};
  Progress progress(static_cast<int>(names.size()));
  for (const std::string& name : names) {
    progress.step(name);
    std::unique_ptr<Mechanism> m;
    try {
      m = make_mechanism(name, opts, config_for(c, name));
    } catch (const Error& e) {
      if (!c.causal || args.mechanisms.size() > 0) throw;
      table.rows.push_back(
          {name, "-", "-", "-", "-", "-", "-", std::string("skipped: ") + e.what()});
      continue;
    }
    Tensor<float> out, mem_out;
    const AttentionArgs a = w.args(*m, out, mem_out);
    Context ctx(c.threads);
    const int64_t peak = peak_memory_growth([&] { m->forward(a, ctx); });
    const Timing t = time_runs(args.warmup, args.reps, [&] { m->forward(a, ctx); });
    if (name == "softmax") base_time = t.median_s;
    const double err = max_abs_diff(out, base);
    table.rows.push_back(
        {name, m->capabilities().fast_kernel ? "fast" : "reference", fmt(t.median_s * 1e3, 4),
         base_time > 0 ? fmt(t.median_s / base_time) : "-",
         peak < 0 ? "n/a" : fmt(peak / 1048576.0), fmt(err), fmt(err / base_scale), m->describe()});
  }
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

// Streaming decode: after a context of n tokens, the median time of one step
// (append one token, query one token). For the KV cache, GB/s = cache bytes read per step.
int bench_decode(const Common& c, const BenchArgs& args, const std::vector<int64_t>& seqs) {
  const auto m = make_mechanism(args.mechanism, options_of(c), config_for(c, args.mechanism));
  Table table{{"mechanism", "context", "step_us", "state_bytes", "GB/s"}, {}};
  Progress progress(static_cast<int>(seqs.size()));
  Context ctx(c.threads);
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
      .memory = m->capabilities().needs_memory ? w.memory.cview() : ConstTensorView{}};
  Tensor<float> out({s.batch, 1, s.heads, s.dim});
  auto rows = [](const Tensor<float>& t, int64_t from, int64_t count) {
    ConstTensorView v = t.cview();
    v.data = t.data() + from * v.stride[1];
    v.shape[1] = count;
    return v;
  };
  for (int64_t n : seqs) {
    progress.step(args.mechanism + " decode context=" + std::to_string(n));
    auto stream = m->new_stream(spec);
    for (int64_t done = 0; done < n;) {
      const int64_t t = std::min<int64_t>(4096, n - done);
      stream->append(rows(w.k, 0, t), rows(w.v, 0, t), ctx);
      done += t;
    }
    int64_t step = 0;
    const Timing t = time_runs(args.warmup, args.reps, [&] {
      const int64_t i = step++ % 4096;
      stream->append(rows(w.k, i, 1), rows(w.v, i, 1), ctx);
      stream->query(rows(w.q, i, 1), out.view(), ctx);
    });
    // Bytes a step reads: the whole fixed-size state, or for a KV cache its filled part.
    const double bytes =
        args.mechanism == "softmax"
            ? static_cast<double>(stream->length()) * s.batch * s.hk() * 2 * s.dim * sizeof(float)
            : static_cast<double>(stream->state_bytes());
    table.rows.push_back({m->describe(), std::to_string(n), fmt(t.median_s * 1e6, 4),
                          std::to_string(stream->state_bytes()), fmt(bytes / t.median_s / 1e9, 3)});
  }
  std::cout << table.render(c.format);
  if (c.format == "table") {
    std::cout << "\nB=" << s.batch << " H=" << s.heads << " D=" << s.dim
              << " threads=" << ctx.num_threads()
              << "; step = append 1 token + query 1 token, median of " << args.reps
              << "; GB/s = bytes read per step (state, or filled KV cache) / step time\n";
  }
  return 0;
}

int cmd_bench(const Common& c, const BenchArgs& args) {
  const std::vector<int64_t> seqs = parse_int_list(args.seqs, "--seq");
  if (args.decode) return bench_decode(c, args, seqs);
  if (args.backward && args.bf16) throw Error("--backward", "has no bfloat16 form; drop --bf16");
  const auto m = make_mechanism(args.mechanism, options_of(c), config_for(c, args.mechanism));
  Table table{{"mechanism", "seq", "median_ms", "min_ms", "GFLOP/s", "Mtokens/s"}, {}};
  Progress progress(static_cast<int>(seqs.size()));
  Context ctx(c.threads);
  for (int64_t n : seqs) {
    progress.step(args.mechanism + " seq=" + std::to_string(n));
    Shape s = args.shape;
    s.seq = n;
    s.kv_seq = 0;
    const Workload w(s, 1);
    Tensor<float> out, mem_out;
    AttentionArgs a = w.args(*m, out, mem_out);
    // --bf16: the same inputs stored as bfloat16 (softmax and linear widen them on load).
    std::vector<bfloat16> q16, k16, v16;
    if (args.bf16) {
      for (auto [src, dst, view] :
           {std::tuple{&w.q, &q16, &a.q}, {&w.k, &k16, &a.k}, {&w.v, &v16, &a.v}}) {
        for (float x : src->vec()) dst->push_back(to_bfloat16(x));
        view->data = dst->data();
        view->dtype = DType::kBF16;
      }
    }
    Timing t;
    double flops = softmax_flops(s, c.causal);
    if (args.backward) {
      // Gradients of sum(out * dout) for a fixed dout (the workload's q, a unit-scale array).
      // softmax keeps the forward's lse, as a training step would.
      Tensor<float> lse;
      if (args.mechanism == "softmax") {
        lse = Tensor<float>({s.batch, s.heads, n});
        a.lse = lse.view();
      }
      m->forward(a, ctx);
      Tensor<float> dq(w.q.shape()), dk(w.k.shape()), dv(w.v.shape()), dmem;
      BackwardArgs g{
          .forward = a, .dout = w.q.cview(), .dq = dq.view(), .dk = dk.view(), .dv = dv.view()};
      if (a.memory.present()) {
        dmem = Tensor<float>(w.memory.shape());
        g.dmemory = dmem.view();
      }
      t = time_runs(args.warmup, args.reps, [&] { m->backward(g, ctx); });
      flops *= 2.5;  // FlashAttention's convention: 5 matmul-sized products against 2
    } else {
      t = time_runs(args.warmup, args.reps, [&] { m->forward(a, ctx); });
    }
    // GFLOP/s is defined for exact softmax only (other mechanisms do other work).
    const std::string gflops = args.mechanism == "softmax" ? fmt(flops / t.median_s / 1e9, 4) : "-";
    table.rows.push_back(
        {m->describe() + (args.bf16 ? " bf16" : "") + (args.backward ? " backward" : ""),
         std::to_string(n), fmt(t.median_s * 1e3, 4), fmt(t.min_s * 1e3, 4), gflops,
         fmt(static_cast<double>(s.batch * n) / t.median_s / 1e6, 4)});
  }
  std::cout << table.render(c.format);
  if (c.format == "table") {
    std::cout << "\nB=" << args.shape.batch << " H=" << args.shape.heads << " D=" << args.shape.dim
              << " threads=" << ctx.num_threads() << " warmup=" << args.warmup
              << " reps=" << args.reps << "; " << Context::cpu_report() << "\n";
  }
  return 0;
}

int cmd_list(const Common& c) {
  Table table{{"mechanism", "causal", "streaming", "backward", "kernel", "defaults"}, {}};
  auto yes = [](bool b) { return std::string(b ? "yes" : "no"); };
  for (const std::string& name : mechanism_names()) {
    const auto m = make_mechanism(name);
    const Capabilities cap = m->capabilities();
    table.rows.push_back({name, yes(cap.causal), yes(cap.streaming), yes(cap.backward),
                          cap.fast_kernel ? "fast" : "reference", m->describe()});
  }
  std::cout << table.render(c.format);
  if (c.format == "table") std::cout << "\n" << Context::cpu_report() << "\n";
  return 0;
}

}  // namespace attnkit::cli
