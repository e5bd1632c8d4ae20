#include "tests/testing/harness.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace attnkit::testing {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

std::string to_string(const Dims& d) {
  std::ostringstream s;
  s << "B=" << d.B << " Sq=" << d.Sq << " Sk=" << d.Sk << " Hq=" << d.Hq << " Hk=" << d.Hk
    << " Dk=" << d.Dk << " Dv=" << d.Dv;
  return s.str();
}

namespace {

TensorView view_of(void* data, const std::array<int64_t, 4>& shape,
                   const std::array<int64_t, 4>& stride, DType dt) {
  TensorView v;
  v.data = data;
  v.dtype = dt;
  v.rank = 4;
  v.shape = shape;
  v.stride = stride;
  return v;
}

int64_t storage_size(const std::array<int64_t, 4>& shape, const std::array<int64_t, 4>& stride) {
  int64_t n = 1;
  for (int i = 0; i < 4; ++i) {
    if (shape[i] == 0) return 1;
    n += (shape[i] - 1) * stride[i];
  }
  return n;
}

std::array<int64_t, 4> strides_for(const std::array<int64_t, 4>& s, Layout layout) {
  const auto [B, S, H, D] = s;
  if (layout == Layout::kContiguous) return {S * H * D, H * D, D, 1};
  const int64_t pitch = D + 3;  // padded rows: misaligned, non-contiguous
  return {H * S * pitch + 5, pitch, S * pitch, 1};
}

// Keys [0, n) query row i sees: right padding and bottom-right causal, written out here
// so the naive yardsticks do not share the library's rule.
int64_t naive_visible(bool causal, int64_t sq, int64_t sk, int64_t length, int64_t i) {
  const int64_t n = causal ? std::min(length, i + 1 + sk - sq) : length;
  return std::max<int64_t>(n, 0);
}

}  // namespace

ConstTensorView Operand::view32() const {
  return as_const(view_of(const_cast<float*>(f32.data()), shape, stride, DType::kF32));
}
ConstTensorView Operand::view64() const {
  return as_const(view_of(const_cast<double*>(f64.data()), shape, stride, DType::kF64));
}
TensorView Operand::mut32() { return view_of(f32.data(), shape, stride, DType::kF32); }
TensorView Operand::mut64() { return view_of(f64.data(), shape, stride, DType::kF64); }

std::vector<bfloat16> round_to_bf16(Operand& o) {
  std::vector<bfloat16> out(o.f32.size());
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = to_bfloat16(o.f32[i]);
    o.f32[i] = to_float(out[i]);
    o.f64[i] = o.f32[i];
  }
  return out;
}

ConstTensorView bf16_view(const std::vector<bfloat16>& data, const Operand& like) {
  ConstTensorView v = like.view32();
  v.data = data.data();
  v.dtype = DType::kBF16;
  return v;
}

std::vector<uint16_t> round_to_narrow(Operand& o, DType dtype) {
  std::vector<uint16_t> out(o.f32.size());
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = to_narrow_bits(o.f32[i], dtype);
    o.f32[i] = from_narrow_bits(out[i], dtype);
    o.f64[i] = o.f32[i];
  }
  return out;
}

TensorView narrow_mut(std::vector<uint16_t>& data, const Operand& like, DType dtype) {
  TensorView v = const_cast<Operand&>(like).mut32();
  v.data = data.data();
  v.dtype = dtype;
  return v;
}

ConstTensorView narrow_view(const std::vector<uint16_t>& data, const Operand& like, DType dtype) {
  return as_const(narrow_mut(const_cast<std::vector<uint16_t>&>(data), like, dtype));
}

Operand make_zero_operand(std::array<int64_t, 4> shape, Layout layout) {
  Operand o;
  o.shape = shape;
  o.stride = strides_for(shape, layout);
  const int64_t n = storage_size(shape, o.stride);
  o.f64.assign(n, 0.0);
  o.f32.assign(n, 0.0f);
  return o;
}

Operand make_operand(std::array<int64_t, 4> shape, Layout layout, std::mt19937& rng,
                     double stddev) {
  Operand o = make_zero_operand(shape, layout);
  std::normal_distribution<double> dist(0.0, stddev);
  for (size_t i = 0; i < o.f64.size(); ++i) {
    // Round through float so both copies hold the same values.
    o.f32[i] = static_cast<float>(dist(rng));
    o.f64[i] = o.f32[i];
  }
  return o;
}

Problem::Problem(const Dims& dims, uint32_t seed, Layout layout, int64_t memory_len) : d(dims) {
  std::mt19937 rng(seed);
  q = make_operand({d.B, d.Sq, d.Hq, d.Dk}, layout, rng);
  k = make_operand({d.B, d.Sk, d.Hk, d.Dk}, layout, rng);
  v = make_operand({d.B, d.Sk, d.Hk, d.Dv}, layout, rng);
  out = make_zero_operand({d.B, d.Sq, d.Hq, d.Dv}, layout);
  if (memory_len > 0) {
    memory = make_operand({d.B, memory_len, d.Hq, d.Dk}, layout, rng);
    memory_out = make_zero_operand({d.B, memory_len, d.Hq, d.Dv}, layout);
  }
}

AttentionArgs Problem::args64() {
  AttentionArgs a;
  a.q = q.view64();
  a.k = k.view64();
  a.v = v.view64();
  a.out = out.mut64();
  a.key_lengths = key_lengths;
  if (!memory.f64.empty()) {
    a.memory = memory.view64();
    a.memory_out = memory_out.mut64();
  }
  return a;
}

AttentionArgs Problem::args32() {
  AttentionArgs a;
  a.q = q.view32();
  a.k = k.view32();
  a.v = v.view32();
  a.out = out.mut32();
  a.key_lengths = key_lengths;
  if (!memory.f32.empty()) {
    a.memory = memory.view32();
    a.memory_out = memory_out.mut32();
  }
  return a;
}

Grads::Grads(const Problem& p, uint32_t seed)
    : dq(make_zero_operand(p.q.shape, Layout::kContiguous)),
      dk(make_zero_operand(p.k.shape, Layout::kContiguous)),
      dv(make_zero_operand(p.v.shape, Layout::kContiguous)) {
  std::mt19937 rng(seed);
  dout = make_operand(p.out.shape, Layout::kContiguous, rng);
  if (!p.memory.f64.empty()) dmemory = make_zero_operand(p.memory.shape, Layout::kContiguous);
}

BackwardArgs Grads::args32(Problem& p) {
  BackwardArgs g{.forward = p.args32(),
                 .dout = dout.view32(),
                 .dq = dq.mut32(),
                 .dk = dk.mut32(),
                 .dv = dv.mut32()};
  if (!dmemory.f64.empty()) g.dmemory = dmemory.mut32();
  return g;
}

BackwardArgs Grads::args64(Problem& p) {
  BackwardArgs g{.forward = p.args64(),
                 .dout = dout.view64(),
                 .dq = dq.mut64(),
                 .dk = dk.mut64(),
                 .dv = dv.mut64()};
  if (!dmemory.f64.empty()) g.dmemory = dmemory.mut64();
  return g;
}

std::vector<float> Grads::all32() const {
  std::vector<float> all = dq.f32;
  all.insert(all.end(), dk.f32.begin(), dk.f32.end());
  all.insert(all.end(), dv.f32.begin(), dv.f32.end());
  all.insert(all.end(), dmemory.f32.begin(), dmemory.f32.end());
  return all;
}

std::string Report::str() const {
  std::ostringstream s;
  s << "max_abs=" << max_abs << " max_rel=" << max_rel << " nmse=" << nmse
    << " worst_index=" << worst << " ref_max=" << ref_max;
  return s.str();
}

Report compare(const Operand& got, bool got_is_f32, const Operand& want) {
  Report r;
  double err2 = 0, ref2 = 0;
  int64_t flat = 0;
  const auto [B, S, H, D] = want.shape;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d, ++flat) {
          const int64_t og = b * got.stride[0] + s * got.stride[1] + h * got.stride[2] + d;
          const int64_t ow = b * want.stride[0] + s * want.stride[1] + h * want.stride[2] + d;
          const double g = got_is_f32 ? got.f32[og] : got.f64[og];
          const double w = want.f64[ow];
          const double e =
              std::isnan(g) ? std::numeric_limits<double>::infinity() : std::abs(g - w);
          if (r.worst < 0 || e > r.max_abs) {
            r.max_abs = e;
            r.worst = flat;
          }
          r.max_rel = std::max(r.max_rel, e / std::max(std::abs(w), 1e-6));
          r.ref_max = std::max(r.ref_max, std::abs(w));
          err2 += e * e;
          ref2 += w * w;
        }
  r.nmse = ref2 > 0 ? err2 / ref2 : err2;
  return r;
}

double allowed(const Budget& b, double naive32_err, double ref_max) {
  return b.k * naive32_err + b.c * std::numeric_limits<float>::epsilon() * std::max(ref_max, 1.0);
}

void expect_lse_matches(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i])) {
      ASSERT_TRUE(std::isinf(got[i]) && got[i] < 0) << "lse " << i;
    } else {
      ASSERT_NEAR(got[i], want[i], 1e-5 * std::max(1.0, std::abs(want[i]))) << "lse " << i;
    }
  }
}

void naive_softmax32(const Problem& p, bool causal, double scale, Operand& out) {
  const Dims& d = p.d;
  const float s = static_cast<float>(scale);
  std::vector<float> w;
  for (int64_t b = 0; b < d.B; ++b) {
    const int64_t len = p.key_lengths.empty() ? d.Sk : p.key_lengths[b];
    for (int64_t h = 0; h < d.Hq; ++h) {
      const int64_t hk = h / (d.Hq / d.Hk);
      for (int64_t i = 0; i < d.Sq; ++i) {
        const int64_t nk = naive_visible(causal, d.Sq, d.Sk, len, i);
        const float* q = p.q.f32.data() + b * p.q.stride[0] + i * p.q.stride[1] + h * p.q.stride[2];
        w.assign(nk, 0.0f);
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < nk; ++j) {
          const float* k =
              p.k.f32.data() + b * p.k.stride[0] + j * p.k.stride[1] + hk * p.k.stride[2];
          float dot = 0;
          for (int64_t c = 0; c < d.Dk; ++c) dot += q[c] * k[c];
          w[j] = dot * s;
          m = std::max(m, w[j]);
        }
        float sum = 0;
        for (float& x : w) sum += (x = std::exp(x - m));
        float* o = out.f32.data() + b * out.stride[0] + i * out.stride[1] + h * out.stride[2];
        for (int64_t c = 0; c < d.Dv; ++c) {
          float acc = 0;
          for (int64_t j = 0; j < nk; ++j) {
            acc += w[j] * p.v.f32[b * p.v.stride[0] + j * p.v.stride[1] + hk * p.v.stride[2] + c];
          }
          o[c] = nk > 0 ? acc / sum : 0.0f;
        }
      }
    }
  }
}

void naive_softmax_backward32(const Problem& p, bool causal, double scale, Grads& g) {
  const Dims& d = p.d;
  const float s = static_cast<float>(scale);
  std::fill(g.dq.f32.begin(), g.dq.f32.end(), 0.0f);
  std::fill(g.dk.f32.begin(), g.dk.f32.end(), 0.0f);
  std::fill(g.dv.f32.begin(), g.dv.f32.end(), 0.0f);
  auto at = [](const Operand& o, int64_t b, int64_t n, int64_t h) {
    return b * o.stride[0] + n * o.stride[1] + h * o.stride[2];
  };
  std::vector<float> pr, dp;
  for (int64_t b = 0; b < d.B; ++b) {
    const int64_t len = p.key_lengths.empty() ? d.Sk : p.key_lengths[b];
    for (int64_t h = 0; h < d.Hq; ++h) {
      const int64_t hk = h / (d.Hq / d.Hk);
      for (int64_t i = 0; i < d.Sq; ++i) {
        const int64_t nk = naive_visible(causal, d.Sq, d.Sk, len, i);
        if (nk == 0) continue;
        const float* q = &p.q.f32[at(p.q, b, i, h)];
        const float* dout = &g.dout.f32[at(g.dout, b, i, h)];
        pr.assign(nk, 0.0f);
        dp.assign(nk, 0.0f);
        float m = -std::numeric_limits<float>::infinity(), sum = 0, dd = 0;
        for (int64_t j = 0; j < nk; ++j) {
          const float* k = &p.k.f32[at(p.k, b, j, hk)];
          for (int64_t c = 0; c < d.Dk; ++c) pr[j] += q[c] * k[c];
          pr[j] *= s;
          m = std::max(m, pr[j]);
        }
        for (float& x : pr) sum += (x = std::exp(x - m));
        for (int64_t j = 0; j < nk; ++j) {
          pr[j] /= sum;
          const float* v = &p.v.f32[at(p.v, b, j, hk)];
          for (int64_t c = 0; c < d.Dv; ++c) dp[j] += dout[c] * v[c];
          dd += pr[j] * dp[j];
        }
        float* dq = &g.dq.f32[at(g.dq, b, i, h)];
        for (int64_t j = 0; j < nk; ++j) {
          const float ds = s * pr[j] * (dp[j] - dd);
          const float* k = &p.k.f32[at(p.k, b, j, hk)];
          float* dk = &g.dk.f32[at(g.dk, b, j, hk)];
          float* dv = &g.dv.f32[at(g.dv, b, j, hk)];
          for (int64_t c = 0; c < d.Dk; ++c) {
            dq[c] += ds * k[c];
            dk[c] += ds * q[c];
          }
          for (int64_t c = 0; c < d.Dv; ++c) dv[c] += pr[j] * dout[c];
        }
      }
    }
  }
}

}  // namespace attnkit::testing
