// attnkit._core: the nanobind bindings. Thin on purpose: arrays become strided views without
// copies, every rule is checked by the C++ library (attnkit::Error -> attnkit.Error, a
// ValueError), and the GIL is released while kernels run. Output allocation, keyword
// handling and framework dispatch (numpy / torch) live in python/attnkit/__init__.py.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <pthread.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "attnkit/attnkit.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using attnkit::ConstTensorView;
using attnkit::DType;
using attnkit::Error;
using attnkit::TensorView;

// Any CPU array, any dtype, any strides: the library checks dtype and stride rules itself so
// its messages are the same from C++, the CLI and Python.
using InArray = nb::ndarray<nb::ro, nb::device::cpu>;
using OutArray = nb::ndarray<nb::device::cpu>;

DType to_dtype(const nb::dlpack::dtype& t, const char* name) {
  const auto code = static_cast<nb::dlpack::dtype_code>(t.code);
  if (t.lanes == 1 && code == nb::dlpack::dtype_code::Float && t.bits == 32) return DType::kF32;
  if (t.lanes == 1 && code == nb::dlpack::dtype_code::Float && t.bits == 64) return DType::kF64;
  if (t.lanes == 1 && code == nb::dlpack::dtype_code::Bfloat && t.bits == 16) return DType::kBF16;
  if (t.lanes == 1 && code == nb::dlpack::dtype_code::Float && t.bits == 16) return DType::kF16;
  // Masks: bool, or uint8 0/1 (what Python passes: a bool array viewed as uint8, as DLPack
  // in older PyTorch has no bool).
  if (t.lanes == 1 && t.bits == 8 &&
      (code == nb::dlpack::dtype_code::Bool || code == nb::dlpack::dtype_code::UInt)) {
    return DType::kBool;
  }
  static constexpr const char* kKinds[] = {"int",    "uint",    "float", "opaque",
                                           "bfloat", "complex", "bool"};
  const std::string kind = t.code < 7 ? kKinds[t.code] : "code " + std::to_string(t.code);
  throw Error(name, "dtype must be float32, float64, bfloat16 or float16 (got " + kind +
                        std::to_string(t.bits) +
                        (t.lanes == 1 ? "" : " x" + std::to_string(t.lanes)) + ")");
}

template <typename View, typename Array>
View to_view(const Array& a, const char* name) {
  View v;
  if (a.ndim() > static_cast<size_t>(attnkit::kMaxRank)) {
    throw Error(name, "rank must be at most " + std::to_string(attnkit::kMaxRank) + " (got " +
                          std::to_string(a.ndim()) + ")");
  }
  v.dtype = to_dtype(a.dtype(), name);
  v.rank = static_cast<int>(a.ndim());
  for (int i = 0; i < v.rank; ++i) {
    v.shape[i] = static_cast<int64_t>(a.shape(i));
    v.stride[i] = a.stride(i);  // elements, as in TensorView
  }
  v.data = const_cast<void*>(static_cast<const void*>(a.data()));
  return v;
}

ConstTensorView in_view(const std::optional<InArray>& a, const char* name) {
  return a ? to_view<ConstTensorView>(*a, name) : ConstTensorView{};
}
// A contiguous 1-D int32 array as a span (key_lengths, key_begin, cu_seqlens, ...).
std::span<const int32_t> int32_span(const std::optional<InArray>& a, const char* name) {
  if (!a) return {};
  const auto t = a->dtype();
  if (a->ndim() != 1 || t.code != static_cast<uint8_t>(nb::dlpack::dtype_code::Int) ||
      t.bits != 32 || (a->shape(0) > 1 && a->stride(0) != 1)) {
    throw Error(name, "must be a contiguous 1-D int32 array");
  }
  return {static_cast<const int32_t*>(a->data()), a->shape(0)};
}

// The masks of one call (attnkit::Mask), holding its arrays while the call runs.
struct PyMask {
  std::optional<InArray> key_begin, query_positions, cu_seqlens_q, cu_seqlens_k, alibi_slopes,
      attn_mask;
  int64_t window_left = -1, window_right = -1;
  double softcap = 0.0;
  attnkit::Mask mask() const {
    attnkit::Mask m;
    m.key_begin = int32_span(key_begin, "key_begin");
    m.query_positions = int32_span(query_positions, "query_positions");
    m.cu_seqlens_q = int32_span(cu_seqlens_q, "cu_seqlens_q");
    m.cu_seqlens_k = int32_span(cu_seqlens_k, "cu_seqlens_k");
    m.window_left = window_left, m.window_right = window_right;
    m.alibi_slopes = in_view(alibi_slopes, "alibi_slopes");
    m.softcap = softcap;
    m.attn_mask = in_view(attn_mask, "attn_mask");
    return m;
  }
};

TensorView out_view(const std::optional<OutArray>& a, const char* name) {
  if (a && a->ndim() > 0 && a->data() == nullptr && a->size() > 0) throw Error(name, "is null");
  return a ? to_view<TensorView>(*a, name) : TensorView{};
}

// Contexts (thread pool + scratch) for the Python threads that call attnkit: each call takes
// one that is free, or makes one, so concurrent calls run concurrently (Context::parallel_for
// is not reentrant, so a Context serves one call at a time). After a call the Context gives
// its scratch back when it holds more than kKeepScratch, so one long sequence does not pin
// its workspace for the life of the process.
constexpr size_t kKeepScratch = size_t{64} << 20;

struct Runtime {
  std::mutex mu;  // guards free and threads; held only to take or give back a Context
  std::vector<std::unique_ptr<attnkit::Context>> free;
  int threads = 0;
  uint64_t generation = 0;  // set_num_threads drops Contexts made for an older count

  std::pair<std::unique_ptr<attnkit::Context>, uint64_t> take() {
    int t;
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!free.empty()) {
        auto c = std::move(free.back());
        free.pop_back();
        return {std::move(c), generation};
      }
      t = threads;
      gen = generation;
    }
    return {std::make_unique<attnkit::Context>(t), gen};  // may throw Error("threads")
  }
  void give_back(std::unique_ptr<attnkit::Context> c, uint64_t gen) {
    c->trim(kKeepScratch);
    std::lock_guard<std::mutex> lock(mu);
    if (gen == generation) free.push_back(std::move(c));
  }
};
Runtime& runtime() {
  static Runtime* r = [] {
    auto* rt = new Runtime;  // never destroyed: worker threads must not outlive the interpreter's
    if (const char* env = std::getenv("ATTNKIT_NUM_THREADS")) rt->threads = std::atoi(env);
    // fork() while another thread holds mu would leave it locked in the child: take it around
    // fork. A Context another thread was using stays in use in the child; its pool is
    // restarted there on first use (Context handles fork itself).
    pthread_atfork([] { runtime().mu.lock(); }, [] { runtime().mu.unlock(); },
                   [] { runtime().mu.unlock(); });
    return rt;
  }();
  return *r;
}

// Runs fn(ctx) on a Context of its own with the GIL released; callers build their views
// before, while they hold the GIL.
template <typename Fn>
void run_released(Fn&& fn) {
  nb::gil_scoped_release release;
  // The Context goes back to the pool however fn ends (an Error propagates after).
  struct Lease {
    Runtime& rt;
    std::pair<std::unique_ptr<attnkit::Context>, uint64_t> ctx;
    ~Lease() { rt.give_back(std::move(ctx.first), ctx.second); }
  } lease{runtime(), runtime().take()};
  fn(*lease.ctx.first);
}

// The backward reads the forward's lse through AttentionArgs::lse, a mutable view it never
// writes.
TensorView read_only(const ConstTensorView& c) {
  TensorView v;
  v.data = const_cast<void*>(c.data);
  v.dtype = c.dtype;
  v.rank = c.rank;
  v.shape = c.shape;
  v.stride = c.stride;
  return v;
}

// A streaming state (KV cache or fixed-size state): append keys/values, query against all
// appended tokens. It owns copies of what it keeps (the memory for luna).
class PyStream {
 public:
  explicit PyStream(std::unique_ptr<attnkit::StreamingState> s) : s_(std::move(s)) {}
  void append(const InArray& k, const InArray& v, const std::optional<InArray>& gate) {
    const auto kv = to_view<ConstTensorView>(k, "k");
    const auto vv = to_view<ConstTensorView>(v, "v");
    const auto gv = in_view(gate, "gate");
    run_released([&](attnkit::Context& ctx) {
      if (gate) {
        s_->append_gated(kv, vv, gv, ctx);
      } else {
        s_->append(kv, vv, ctx);
      }
    });
  }
  void query(const InArray& q, const OutArray& out) {
    const auto qv = to_view<ConstTensorView>(q, "q");
    const auto ov = to_view<TensorView>(out, "out");
    run_released([&](attnkit::Context& ctx) { s_->query(qv, ov, ctx); });
  }
  size_t state_bytes() const { return s_->state_bytes(); }
  int64_t length() const { return s_->length(); }

 private:
  std::unique_ptr<attnkit::StreamingState> s_;
};

class PyMechanism {
 public:
  PyMechanism(const std::string& name, double scale, bool causal, const std::string& config)
      : m_(attnkit::make_mechanism(name, attnkit::AttentionOptions{scale, causal}, config)) {}

  std::string name() const { return std::string(m_->name()); }
  std::string describe() const { return m_->describe(); }
  bool causal() const { return m_->options().causal; }
  double scale() const { return m_->options().scale; }
  nb::dict capabilities() const {
    const attnkit::Capabilities c = m_->capabilities();
    nb::dict d;
    d["causal"] = c.causal;
    d["streaming"] = c.streaming;
    d["kv_cache"] = c.kv_cache;
    d["backward"] = c.backward;
    d["needs_memory"] = c.needs_memory;
    d["uses_gate"] = c.uses_gate;
    d["uses_filter"] = c.uses_filter;
    d["emits_lse"] = c.emits_lse;
    d["bfloat16"] = c.bfloat16;
    d["bfloat16_backward"] = c.bfloat16_backward;
    d["bf16_path"] = c.bf16_path;
    d["aligned"] = c.aligned;
    nb::list masks;  // the mask keywords it takes (key_lengths and causal: every mechanism)
    for (uint32_t bit = 1; bit < attnkit::kAllMasks; bit <<= 1) {
      if (c.masks & bit) masks.append(std::string(attnkit::mask_name(attnkit::MaskKind(bit))));
    }
    d["masks"] = masks;
    return d;
  }

  PyStream new_stream(int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,
                      int64_t value_dim, int64_t max_tokens, const std::optional<InArray>& memory,
                      int64_t window, double softcap, const std::optional<InArray>& alibi_slopes,
                      const std::optional<InArray>& filter) const {
    attnkit::StreamSpec spec{.batch = batch,
                             .heads = heads,
                             .kv_heads = kv_heads,
                             .head_dim = head_dim,
                             .value_dim = value_dim,
                             .max_tokens = max_tokens,
                             .memory = in_view(memory, "memory"),
                             .filter = in_view(filter, "filter"),
                             .window = window,
                             .softcap = softcap,
                             .alibi_slopes = in_view(alibi_slopes, "alibi_slopes")};
    return PyStream(m_->new_stream(spec));
  }

  void forward(const InArray& q, const InArray& k, const InArray& v, const OutArray& out,
               const std::optional<OutArray>& lse, const std::optional<InArray>& key_lengths,
               const std::optional<InArray>& memory, const std::optional<OutArray>& memory_out,
               const std::optional<InArray>& gate, const std::optional<InArray>& filter,
               const std::optional<PyMask>& mask) const {
    attnkit::AttentionArgs a = args(q, k, v, out, key_lengths, memory, gate, filter, mask);
    a.lse = out_view(lse, "lse");
    a.memory_out = out_view(memory_out, "memory_out");
    run_released([&](attnkit::Context& ctx) { m_->forward(a, ctx); });
  }

  // Validates the inputs (no outputs yet): Python allocates outputs only after this.
  void check_inputs(const InArray& q, const InArray& k, const InArray& v,
                    const std::optional<InArray>& key_lengths, const std::optional<InArray>& memory,
                    const std::optional<InArray>& gate, const std::optional<InArray>& filter,
                    const std::optional<PyMask>& mask) const {
    const attnkit::AttentionArgs a =
        args(q, k, v, OutArray(), key_lengths, memory, gate, filter, mask);
    m_->validate_inputs(a);
  }

  void backward(const InArray& q, const InArray& k, const InArray& v, const InArray& out,
                const InArray& dout, const OutArray& dq, const OutArray& dk, const OutArray& dv,
                const std::optional<InArray>& key_lengths, const std::optional<InArray>& memory,
                const std::optional<InArray>& gate, const std::optional<InArray>& filter,
                const std::optional<OutArray>& dgate, const std::optional<OutArray>& dmemory,
                const std::optional<OutArray>& dfilter, const std::optional<InArray>& lse,
                const std::optional<PyMask>& mask) const {
    attnkit::BackwardArgs g;
    g.forward = args(q, k, v, OutArray(), key_lengths, memory, gate, filter, mask);
    g.forward.out = to_view<TensorView>(out, "out");  // read only: the forward's output
    g.forward.lse = read_only(in_view(lse, "lse"));
    g.dout = to_view<ConstTensorView>(dout, "dout");
    g.dq = to_view<TensorView>(dq, "dq");
    g.dk = to_view<TensorView>(dk, "dk");
    g.dv = to_view<TensorView>(dv, "dv");
    g.dgate = out_view(dgate, "dgate");
    g.dmemory = out_view(dmemory, "dmemory");
    g.dfilter = out_view(dfilter, "dfilter");
    run_released([&](attnkit::Context& ctx) { m_->backward(g, ctx); });
  }

 private:
  attnkit::AttentionArgs args(const InArray& q, const InArray& k, const InArray& v,
                              const OutArray& out, const std::optional<InArray>& key_lengths,
                              const std::optional<InArray>& memory,
                              const std::optional<InArray>& gate,
                              const std::optional<InArray>& filter,
                              const std::optional<PyMask>& mask) const {
    attnkit::AttentionArgs a;
    a.q = to_view<ConstTensorView>(q, "q");
    a.k = to_view<ConstTensorView>(k, "k");
    a.v = to_view<ConstTensorView>(v, "v");
    if (out.is_valid()) a.out = to_view<TensorView>(out, "out");
    a.memory = in_view(memory, "memory");
    a.gate = in_view(gate, "gate");
    a.filter = in_view(filter, "filter");
    a.key_lengths = int32_span(key_lengths, "key_lengths");
    if (mask) a.mask = mask->mask();
    return a;
  }

  std::unique_ptr<attnkit::Mechanism> m_;
};

}  // namespace

// The module-level functions: registry, threads, version, config keys, top-k FF.
void bind_functions(nb::module_& m) {
  m.def("mechanism_names", &attnkit::mechanism_names);
  m.def("cpu_report", &attnkit::Context::cpu_report);
  m.def("bf16_paths", &attnkit::Context::bf16_paths);
  m.def("bf16_path", &attnkit::Context::bf16_path);
  m.def("set_bf16_path", &attnkit::Context::set_bf16_path, "path"_a);
  m.def(
      "set_num_threads",
      [](int threads) {
        attnkit::Context::check_thread_count(threads);  // fail now, not at the next call
        Runtime& rt = runtime();
        std::lock_guard<std::mutex> lock(rt.mu);
        rt.threads = threads;
        rt.free.clear();
        ++rt.generation;
      },
      "threads"_a,
      "Threads each later call uses; <= 0: the CPUs this process may use (affinity, cgroup "
      "quota). At most max(64, 4 x those CPUs).");
  m.def("num_threads", [] {
    Runtime& rt = runtime();
    std::lock_guard<std::mutex> lock(rt.mu);
    return rt.threads > 0 ? rt.threads : attnkit::Context::default_threads();
  });
  m.def("max_threads", &attnkit::Context::max_threads);
  m.def("available_cpus", &attnkit::Context::available_cpus);
  m.def("version", [] { return std::string(attnkit::kVersion); });
  m.def(
      "config_keys",
      [](const std::string& name) {
        nb::list out;
        for (const attnkit::ConfigKey& k : attnkit::config_keys(name)) {
          nb::dict d;
          d["key"] = k.key;
          d["type"] = k.type;
          d["default"] = k.default_value;
          d["allowed"] = k.allowed;
          d["help"] = k.help;
          out.append(d);
        }
        return out;
      },
      "name"_a, "The config keys of a mechanism: key, type, default, allowed, help.");
  m.def(
      "topk_feed_forward",
      [](const InArray& x, const InArray& keys, const InArray& values, const OutArray& out, int k) {
        const auto xv = to_view<ConstTensorView>(x, "x");
        const auto kv = to_view<ConstTensorView>(keys, "keys");
        const auto vv = to_view<ConstTensorView>(values, "values");
        const auto ov = to_view<TensorView>(out, "out");
        run_released(
            [&](attnkit::Context& ctx) { attnkit::topk_feed_forward(xv, kv, vv, ov, k, ctx); });
      },
      "x"_a.noconvert(), "keys"_a.noconvert(), "values"_a.noconvert(), "out"_a.noconvert(), "k"_a);
}

// The classes: Mask (a call's masks), Stream, Mechanism.
void bind_classes(nb::module_& m) {
  using OptIn = std::optional<InArray>;
  nb::class_<PyMask>(m, "Mask").def(
      "__init__",
      [](PyMask* self, OptIn key_begin, OptIn query_positions, OptIn cu_seqlens_q,
         OptIn cu_seqlens_k, int64_t window_left, int64_t window_right, OptIn alibi_slopes,
         double softcap, OptIn attn_mask) {
        new (self) PyMask{std::move(key_begin),
                          std::move(query_positions),
                          std::move(cu_seqlens_q),
                          std::move(cu_seqlens_k),
                          std::move(alibi_slopes),
                          std::move(attn_mask),
                          window_left,
                          window_right,
                          softcap};
      },
      "key_begin"_a.noconvert() = nb::none(), "query_positions"_a.noconvert() = nb::none(),
      "cu_seqlens_q"_a.noconvert() = nb::none(), "cu_seqlens_k"_a.noconvert() = nb::none(),
      "window_left"_a = -1, "window_right"_a = -1, "alibi_slopes"_a.noconvert() = nb::none(),
      "softcap"_a = 0.0, "attn_mask"_a.noconvert() = nb::none());

  nb::class_<PyStream>(m, "Stream")
      .def("append", &PyStream::append, "k"_a.noconvert(), "v"_a.noconvert(),
           "gate"_a.noconvert() = nb::none())
      .def("query", &PyStream::query, "q"_a.noconvert(), "out"_a.noconvert())
      .def_prop_ro("state_bytes", &PyStream::state_bytes)
      .def_prop_ro("length", &PyStream::length);

  nb::class_<PyMechanism>(m, "Mechanism")
      .def(nb::init<const std::string&, double, bool, const std::string&>(), "name"_a,
           "scale"_a = 0.0, "causal"_a = false, "config"_a = "")
      .def_prop_ro("name", &PyMechanism::name)
      .def_prop_ro("causal", &PyMechanism::causal)
      .def_prop_ro("scale", &PyMechanism::scale)
      .def("describe", &PyMechanism::describe)
      .def("capabilities", &PyMechanism::capabilities)
      .def("new_stream", &PyMechanism::new_stream, "batch"_a, "heads"_a, "kv_heads"_a, "head_dim"_a,
           "value_dim"_a, "max_tokens"_a, "memory"_a.noconvert() = nb::none(), "window"_a = -1,
           "softcap"_a = 0.0, "alibi_slopes"_a.noconvert() = nb::none(),
           "filter"_a.noconvert() = nb::none())
      .def("check_inputs", &PyMechanism::check_inputs, "q"_a.noconvert(), "k"_a.noconvert(),
           "v"_a.noconvert(), "key_lengths"_a.noconvert() = nb::none(),
           "memory"_a.noconvert() = nb::none(), "gate"_a.noconvert() = nb::none(),
           "filter"_a.noconvert() = nb::none(), "mask"_a = nb::none())
      .def("forward", &PyMechanism::forward, "q"_a.noconvert(), "k"_a.noconvert(),
           "v"_a.noconvert(), "out"_a.noconvert(), "lse"_a.noconvert() = nb::none(),
           "key_lengths"_a.noconvert() = nb::none(), "memory"_a.noconvert() = nb::none(),
           "memory_out"_a.noconvert() = nb::none(), "gate"_a.noconvert() = nb::none(),
           "filter"_a.noconvert() = nb::none(), "mask"_a = nb::none())
      .def("backward", &PyMechanism::backward, "q"_a.noconvert(), "k"_a.noconvert(),
           "v"_a.noconvert(), "out"_a.noconvert(), "dout"_a.noconvert(), "dq"_a.noconvert(),
           "dk"_a.noconvert(), "dv"_a.noconvert(), "key_lengths"_a.noconvert() = nb::none(),
           "memory"_a.noconvert() = nb::none(), "gate"_a.noconvert() = nb::none(),
           "filter"_a.noconvert() = nb::none(), "dgate"_a.noconvert() = nb::none(),
           "dmemory"_a.noconvert() = nb::none(), "dfilter"_a.noconvert() = nb::none(),
           "lse"_a.noconvert() = nb::none(), "mask"_a = nb::none());
}

NB_MODULE(_core, m) {
  m.doc() = "attnkit C++ kernels (use the attnkit package, not this module)";
  nb::exception<Error>(m, "Error", PyExc_ValueError);
  // Mechanisms held by autograd graphs or module globals can outlive the module at
  // interpreter exit; nanobind would report those as leaks, which they are not.
  nb::set_leak_warnings(false);

  bind_functions(m);
  bind_classes(m);
}
