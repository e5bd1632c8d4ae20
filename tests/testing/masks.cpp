#include "tests/testing/masks.hpp"

#include <limits>

namespace attnkit::testing {

void MaskSpec::apply(AttentionArgs& a) const {
  const bool f64 = a.q.dtype == DType::kF64;
  if (!key_lengths.empty()) a.key_lengths = key_lengths;
  Mask& m = a.mask;
  m.key_begin = key_begin;
  m.query_positions = query_positions;
  m.window_left = window_left, m.window_right = window_right;
  m.softcap = softcap;
  if (!alibi.empty()) {
    alibi32.assign(alibi.begin(), alibi.end());
    const int64_t hq = a.q.shape[2];
    const void* data = f64 ? static_cast<const void*>(alibi.data()) : alibi32.data();
    ConstTensorView t;
    t.data = data;
    t.dtype = f64 ? DType::kF64 : DType::kF32;
    t.rank = alibi_batched ? 2 : 1;
    t.shape = {alibi_batched ? static_cast<int64_t>(alibi.size()) / hq : hq, hq, 0, 0};
    t.stride = alibi_batched ? std::array<int64_t, 4>{hq, 1, 0, 0} : std::array<int64_t, 4>{1};
    m.alibi_slopes = t;
  }
  if (attn_mask != AttnMask::kNone) {
    ConstTensorView t;
    t.rank = 4;
    t.shape = mask_shape;
    t.stride = contiguous_strides({mask_shape[0], mask_shape[1], mask_shape[2], mask_shape[3]});
    if (attn_mask == AttnMask::kBool) {
      t.data = mask_bool.data();
      t.dtype = DType::kBool;
    } else if (f64) {
      t.data = mask_f64.data();
      t.dtype = DType::kF64;
    } else {
      mask_f32.assign(mask_f64.begin(), mask_f64.end());
      t.data = mask_f32.data();
      t.dtype = DType::kF32;
    }
    m.attn_mask = t;
  }
}

void random_attn_mask(MaskSpec& m, const Dims& d, MaskSpec::AttnMask kind, bool per_batch,
                      bool per_head, uint32_t seed) {
  std::mt19937 rng(seed);
  m.attn_mask = kind;
  m.mask_shape = {per_batch ? d.B : 1, per_head ? d.Hq : 1, d.Sq, d.Sk};
  const int64_t n = m.mask_shape[0] * m.mask_shape[1] * d.Sq * d.Sk;
  std::uniform_int_distribution<int> u(0, 29);
  std::normal_distribution<double> g;
  m.mask_bool.resize(n);
  m.mask_f64.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    const int r = u(rng);
    m.mask_bool[i] = r >= 6;
    m.mask_f64[i] = r < 5 ? -std::numeric_limits<double>::infinity() : g(rng);
  }
}

std::vector<MaskSpec> mask_sweep(const Dims& d, bool causal) {
  std::vector<MaskSpec> out;
  const auto i32 = [](int64_t x) { return static_cast<int32_t>(x); };
  auto add = [&](MaskSpec m) { out.push_back(std::move(m)); };
  std::vector<double> per_head, per_batch;
  for (int64_t h = 0; h < d.Hq; ++h) per_head.push_back(std::exp2(-8.0 * (h + 1) / d.Hq));
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.Hq; ++h) per_batch.push_back(0.05 * (b + 1) + 0.01 * h);
  std::vector<int32_t> begin(d.B), end(d.B), positions(d.B);
  for (int64_t b = 0; b < d.B; ++b) {
    begin[b] = i32(std::min<int64_t>(d.Sk, (b * 37) % std::max<int64_t>(d.Sk / 2, 1)));
    end[b] = i32(std::max<int64_t>(begin[b], d.Sk - b * 5));
    positions[b] = i32(std::max<int64_t>(0, d.Sk - d.Sq - 3 * b));
  }
  add({.name = "left padding", .key_begin = begin});
  add({.name = "both paddings", .key_begin = begin, .key_lengths = end});
  add({.name = "query positions", .query_positions = positions});
  add({.name = "window (37, 0)", .window_left = 37, .window_right = 0});
  add({.name = "window (130, -1)", .window_left = 130});
  add({.name = "window (5, 9)", .window_left = 5, .window_right = 9});
  add({.name = "window (-1, 200)", .window_right = 200});
  add({.name = "alibi per head", .alibi = per_head});
  add({.name = "alibi per batch", .alibi = per_batch, .alibi_batched = true});
  add({.name = "softcap 2", .softcap = 2.0});
  MaskSpec bool_mask{.name = "bool attn_mask [1, Hq, Sq, Sk]"};
  random_attn_mask(bool_mask, d, MaskSpec::AttnMask::kBool, false, true, 7);
  add(bool_mask);
  MaskSpec float_mask{.name = "float attn_mask [B, 1, Sq, Sk]"};
  random_attn_mask(float_mask, d, MaskSpec::AttnMask::kFloat, true, false, 8);
  add(float_mask);
  MaskSpec all{.name = "window + padding + positions + alibi + softcap + float mask"};
  random_attn_mask(all, d, MaskSpec::AttnMask::kFloat, true, true, 9);
  all.key_begin = begin, all.key_lengths = end, all.query_positions = positions;
  all.window_left = 40, all.window_right = causal ? -1 : 17;
  all.alibi = per_head, all.softcap = 3.0;
  add(all);
  return out;
}

}  // namespace attnkit::testing
