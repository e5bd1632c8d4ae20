// The masks' rules (Mechanism::check_masks), the resolved problem (Problem::resolve), and
// the base class's splitting of a packed batch (varlen) into sequences and, for mechanisms
// that do not position queries per row, of left padding into per-row calls on the valid
// keys (Mechanism::run_split, run_backward_split).
#include <string>
#include <vector>

#include "attnkit/error.hpp"
#include "attnkit/mechanism.hpp"
#include "src/mechanisms/validate.hpp"

namespace attnkit {

std::string_view mask_name(MaskKind kind) {
  switch (kind) {
    case kMaskKeyRanges:
      return "key_begin";
    case kMaskQueryPositions:
      return "query_positions";
    case kMaskVarlen:
      return "cu_seqlens";
    case kMaskWindow:
      return "window_size";
    case kMaskAlibi:
      return "alibi_slopes";
    case kMaskSoftcap:
      return "softcap";
    case kMaskAttnMask:
      return "attn_mask";
  }
  return "mask";
}

namespace {

using detail::InputsOnly;
using detail::kMaxDim;

std::string s(int64_t x) { return std::to_string(x); }

// The mask kinds args use.
uint32_t masks_used(const AttentionArgs& a) {
  const Mask& m = a.mask;
  uint32_t u = 0;
  if (!m.key_begin.empty()) u |= kMaskKeyRanges;
  if (!m.query_positions.empty()) u |= kMaskQueryPositions;
  if (m.varlen()) u |= kMaskVarlen;
  if (m.has_window()) u |= kMaskWindow;
  if (m.alibi_slopes.present()) u |= kMaskAlibi;
  if (m.softcap != 0.0) u |= kMaskSoftcap;
  if (m.attn_mask.present()) u |= kMaskAttnMask;
  return u;
}

// Why a mechanism's math does not admit a mask (the Error's text).
std::string refusal(std::string_view mechanism, MaskKind kind) {
  const std::string m(mechanism);
  switch (kind) {
    case kMaskQueryPositions:
    case kMaskWindow:
    case kMaskAlibi:
    case kMaskAttnMask:
      return "is not supported by " + m +
             ": its state sums keys without a per-query, per-key logit (only softmax, topk and "
             "ra take per-key masks; " +
             m + " takes padding, packed sequences and causal)";
    case kMaskSoftcap:
      return "is not supported by " + m +
             ": only softmax and topk cap logits (ra's estimator needs logits linear in q.k)";
    default:
      return "is not supported by " + m;
  }
}

void check_positions(std::span<const int32_t> x, std::string_view name, int64_t B, int64_t hi) {
  const std::string n(name);
  if (static_cast<int64_t>(x.size()) != B)
    throw Error(n, "must have one entry per batch (" + s(B) + "), got " + s(x.size()));
  for (size_t b = 0; b < x.size(); ++b) {
    if (x[b] < 0 || x[b] > hi)
      throw Error(n, "entry " + s(b) + " (" + s(x[b]) + ") must be in [0, " + s(hi) + "]");
  }
}

// cu_seqlens: n + 1 >= 2 entries, 0 first, non-decreasing, the packed total last.
void check_cu_seqlens(std::span<const int32_t> cu, std::string_view name, int64_t total) {
  const std::string n(name);
  if (cu.size() < 2) throw Error(n, "must have n + 1 >= 2 entries (n sequences)");
  if (cu[0] != 0) throw Error(n, "must start at 0, got " + s(cu[0]));
  for (size_t i = 1; i < cu.size(); ++i) {
    if (cu[i] < cu[i - 1]) {
      throw Error(n, "must be non-decreasing (entry " + s(i) + " = " + s(cu[i]) + " < " +
                         s(cu[i - 1]) + ")");
    }
  }
  if (cu.back() != total) {
    throw Error(n, "must end at the packed length " + s(total) + ", got " + s(cu.back()));
  }
}

void check_varlen(const AttentionArgs& a, int64_t Hq, bool aligned) {
  const Mask& m = a.mask;
  if (m.cu_seqlens_q.empty() || m.cu_seqlens_k.empty())
    throw Error("cu_seqlens", "cu_seqlens_q and cu_seqlens_k must be given together");
  if (a.q.shape[0] != 1)
    throw Error("q", "a packed batch (cu_seqlens) has batch 1, got " + s(a.q.shape[0]));
  check_cu_seqlens(m.cu_seqlens_q, "cu_seqlens_q", a.q.shape[1]);
  check_cu_seqlens(m.cu_seqlens_k, "cu_seqlens_k", a.k.shape[1]);
  const int64_t n = static_cast<int64_t>(m.cu_seqlens_q.size()) - 1;
  if (static_cast<int64_t>(m.cu_seqlens_k.size()) != n + 1) {
    throw Error("cu_seqlens_k", "must have as many entries as cu_seqlens_q (" + s(n + 1) +
                                    "), got " + s(m.cu_seqlens_k.size()));
  }
  if (!a.key_lengths.empty() || !m.key_begin.empty() || !m.query_positions.empty())
    throw Error("cu_seqlens", "a packed batch takes no key_lengths, key_begin or query_positions");
  if (m.attn_mask.present())
    throw Error("attn_mask", "is not supported with cu_seqlens (pack the sequences' masks apart)");
  if (aligned && !std::equal(m.cu_seqlens_q.begin(), m.cu_seqlens_q.end(), m.cu_seqlens_k.begin()))
    throw Error("cu_seqlens_k", "must equal cu_seqlens_q: queries and keys are one sequence here");
  if (m.alibi_slopes.rank == 2 && m.alibi_slopes.shape[0] != n) {
    throw Error("alibi_slopes", "shape must be [Hq] or [n, Hq] = [" + s(n) + ", " + s(Hq) +
                                    "] for a packed batch of n sequences");
  }
}

void check_alibi(const ConstTensorView& t, DType dtype, int64_t B, int64_t Hq) {
  if (t.rank != 1 && t.rank != 2)
    throw Error("alibi_slopes", "must have rank 1 [Hq] or 2 [B, Hq], got " + s(t.rank));
  if (t.dtype != dtype) {
    throw Error("alibi_slopes",
                std::string("must be ") + dtype_name(dtype) + ", got " + dtype_name(t.dtype));
  }
  const bool ok = t.rank == 1 ? t.shape[0] == Hq : (t.shape[0] == B && t.shape[1] == Hq);
  if (!ok) {
    throw Error("alibi_slopes",
                "shape must be [Hq] = [" + s(Hq) + "] or [B, Hq] = [" + s(B) + ", " + s(Hq) + "]");
  }
  if (t.data == nullptr) throw Error("alibi_slopes", "data pointer is null");
  for (int i = 0; i < t.rank; ++i)
    if (t.stride[i] < 0) throw Error("alibi_slopes", "strides must be >= 0");
  for (int64_t r = 0; r < (t.rank == 2 ? B : 1); ++r)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t off = t.rank == 1 ? h * t.stride[0] : r * t.stride[0] + h * t.stride[1];
      const double x = dtype == DType::kF64 ? static_cast<const double*>(t.data)[off]
                                            : static_cast<const float*>(t.data)[off];
      if (!std::isfinite(x)) throw Error("alibi_slopes", "must be finite (found NaN or Inf)");
    }
}

// Bool, or additive float in the inputs' float dtype; [B|1, Hq|1, Sq|1, Sk|1], strides >= 0.
void check_attn_mask(const ConstTensorView& t, DType dtype, const int64_t (&full)[4]) {
  const char* dims[4] = {"B", "Hq", "Sq", "Sk"};
  if (t.rank != 4) throw Error("attn_mask", "must have rank 4 [B, Hq, Sq, Sk], got " + s(t.rank));
  if (t.dtype != DType::kBool && t.dtype != dtype) {
    throw Error("attn_mask", std::string("must be bool or ") + dtype_name(dtype) + ", got " +
                                 dtype_name(t.dtype));
  }
  bool empty = false;
  for (int i = 0; i < 4; ++i) {
    if (t.shape[i] != full[i] && t.shape[i] != 1) {
      throw Error("attn_mask", std::string(dims[i]) + " (" + s(t.shape[i]) + ") must be " +
                                   s(full[i]) + " or 1 (broadcast)");
    }
    if (t.stride[i] < 0) throw Error("attn_mask", "strides must be >= 0");
    empty |= full[i] == 0;
  }
  if (empty || InputsOnly::active()) return;
  if (t.data == nullptr) throw Error("attn_mask", "data pointer is null");
  if (t.dtype == DType::kBool) return;
  // NaN and +inf have no meaning as an additive mask; -inf masks the key.
  for (int64_t b = 0; b < t.shape[0]; ++b)
    for (int64_t h = 0; h < t.shape[1]; ++h)
      for (int64_t i = 0; i < t.shape[2]; ++i)
        for (int64_t j = 0; j < t.shape[3]; ++j) {
          const int64_t off = t.offset(b, h, i, j);
          const double x = dtype == DType::kF64 ? static_cast<const double*>(t.data)[off]
                                                : static_cast<const float*>(t.data)[off];
          if (std::isnan(x) || x == std::numeric_limits<double>::infinity())
            throw Error("attn_mask", "must not hold NaN or +inf (-inf masks a key)");
        }
}

}  // namespace

void Mechanism::check_masks(const AttentionArgs& a) const {
  const uint32_t used = masks_used(a);
  if (used == 0) return;
  const uint32_t admitted = capabilities().masks;
  for (uint32_t bit = 1; bit < kAllMasks; bit <<= 1) {
    if ((used & bit) && !(admitted & bit)) {
      const auto kind = static_cast<MaskKind>(bit);
      throw Error(std::string(mask_name(kind)), refusal(name(), kind));
    }
  }
  const Mask& m = a.mask;
  const int64_t B = a.q.shape[0], Sq = a.q.shape[1], Sk = a.k.shape[1], Hq = a.q.shape[2];
  const DType dtype = a.q.dtype == DType::kF64 ? DType::kF64 : DType::kF32;
  if (m.varlen()) check_varlen(a, Hq, capabilities().aligned);
  if (!m.key_begin.empty()) {
    check_positions(m.key_begin, "key_begin", B, Sk);
    for (size_t b = 0; b < a.key_lengths.size(); ++b) {
      if (m.key_begin[b] > a.key_lengths[b]) {
        throw Error("key_begin", "entry " + s(b) + " (" + s(m.key_begin[b]) +
                                     ") must be <= key_lengths[" + s(b) + "] (" +
                                     s(a.key_lengths[b]) + ")");
      }
    }
  }
  if (!m.query_positions.empty())
    check_positions(m.query_positions, "query_positions", B, kMaxDim - 1 - Sq);
  if (m.window_left < -1 || m.window_right < -1 || m.window_left >= kMaxDim ||
      m.window_right >= kMaxDim) {
    throw Error("window_size", "(" + s(m.window_left) + ", " + s(m.window_right) +
                                   "): each side must be -1 (unbounded) or in [0, 2^31)");
  }
  if (!(m.softcap >= 0.0) || !std::isfinite(m.softcap))
    throw Error("softcap", "must be finite and >= 0 (0: off)");
  if (m.alibi_slopes.present()) check_alibi(m.alibi_slopes, dtype, B, Hq);
  if (m.attn_mask.present()) {
    const int64_t full[4] = {B, Hq, Sq, Sk};
    check_attn_mask(m.attn_mask, dtype, full);
  }
}

}  // namespace attnkit
