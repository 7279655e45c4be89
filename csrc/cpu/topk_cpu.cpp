// Top-k with error feedback. Fast path: thresholds from a sample, then ONE
// fused pass (c = x + residual, compare, compact, residual update) with
// per-thread output lists; only the few candidates near the threshold are
// sorted out afterwards. Whenever the sample misjudged (rare, or adversarial
// data such as many equal values), the selection is undone and the exact
// radix select runs instead, so results are always within the stated bounds.
// Zero entries are never selected; free output slots are padded (pad_topk).
#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "core/cpu_ops.h"
#include "core/float_bits.h"
#include "core/layout.h"
#include "cpu/dispatch.h"
#include "cpu/parallel.h"
#include "cpu/topk_radix.h"
#include "cpu/topk_sampling.h"

namespace hvdkit::cpu {
namespace {

// Output lists of one range, with their storage.
struct RangeLists {
  std::unique_ptr<int32_t[]> sure_idx;
  std::unique_ptr<float[]> sure_val;
  std::unique_ptr<int32_t[]> cand_idx;
  TopkScanBuffers buffers{};

  RangeLists(int64_t sure_cap, int64_t cand_cap)
      : sure_idx(new int32_t[sure_cap]), sure_val(new float[sure_cap]), cand_idx(new int32_t[cand_cap]) {
    buffers = {sure_idx.get(), sure_val.get(), sure_cap, 0, cand_idx.get(), cand_cap, 0, false};
  }
};

// Puts the values of the selected entries back into the residual.
void undo(const std::vector<RangeLists>& lists, float* residual) {
  for (const RangeLists& l : lists) {
    for (int64_t j = 0; j < l.buffers.sure_n; ++j) residual[l.buffers.sure_idx[j]] = l.buffers.sure_val[j];
  }
}

void error_feedback_only(const float* x, float* residual, int64_t n, int threads) {
  const KernelTable& kernels = active_kernels();
  parallel_ranges(n, 64, range_count(n, kMinElementsPerThread, threads),
                  [&](int, int64_t begin, int64_t end) {
                    kernels.convert(x + begin, DType::kFloat32, residual + begin, DType::kFloat32,
                                    end - begin, 1.0f, true);
                  });
}

// Exact: the sure entries plus the `need` largest candidates (all of them
// when there are fewer: the candidates then hold every non-zero entry left).
int64_t finish_exact(std::vector<RangeLists>& lists, int64_t need, float* residual,
                     int32_t* indices, float* values) {
  std::vector<std::pair<uint32_t, int32_t>> candidates;
  for (const RangeLists& l : lists) {
    for (int64_t j = 0; j < l.buffers.cand_n; ++j) {
      const int32_t index = l.buffers.cand_idx[j];
      candidates.emplace_back(magnitude_key(residual[index]), index);
    }
  }
  need = std::min<int64_t>(need, static_cast<int64_t>(candidates.size()));
  std::nth_element(candidates.begin(), candidates.begin() + need, candidates.end(),
                   std::greater<std::pair<uint32_t, int32_t>>());
  int64_t out = 0;
  for (const RangeLists& l : lists) {
    std::memcpy(indices + out, l.buffers.sure_idx, l.buffers.sure_n * sizeof(int32_t));
    std::memcpy(values + out, l.buffers.sure_val, l.buffers.sure_n * sizeof(float));
    out += l.buffers.sure_n;
  }
  for (int64_t j = 0; j < need; ++j) {
    const int32_t index = candidates[j].second;
    indices[out] = index;
    values[out] = residual[index];
    residual[index] = 0.0f;
    ++out;
  }
  return out;
}

// Approximate: everything selected, or the k largest of it when the
// threshold let more through (the rest goes back into the residual).
// Returns how many were written.
int64_t finish_approx(std::vector<RangeLists>& lists, int64_t selected, int64_t k, float* residual,
                      int32_t* indices, float* values) {
  if (selected <= k) {
    int64_t out = 0;
    for (const RangeLists& l : lists) {
      std::memcpy(indices + out, l.buffers.sure_idx, l.buffers.sure_n * sizeof(int32_t));
      std::memcpy(values + out, l.buffers.sure_val, l.buffers.sure_n * sizeof(float));
      out += l.buffers.sure_n;
    }
    return out;
  }
  std::vector<std::pair<uint32_t, int64_t>> order;  // (key, position in the lists)
  order.reserve(selected);
  for (size_t r = 0; r < lists.size(); ++r) {
    for (int64_t j = 0; j < lists[r].buffers.sure_n; ++j) {
      order.emplace_back(magnitude_key(lists[r].buffers.sure_val[j]), (static_cast<int64_t>(r) << 32) | j);
    }
  }
  std::nth_element(order.begin(), order.begin() + k, order.end(),
                   std::greater<std::pair<uint32_t, int64_t>>());
  for (int64_t j = 0; j < selected; ++j) {
    const TopkScanBuffers& b = lists[order[j].second >> 32].buffers;
    const int64_t at = order[j].second & 0xffffffff;
    if (j < k) {
      indices[j] = b.sure_idx[at];
      values[j] = b.sure_val[at];
    } else {
      residual[b.sure_idx[at]] = b.sure_val[at];
    }
  }
  return k;
}

}  // namespace

int64_t topk_ef(const float* x, float* residual, int64_t n, int64_t k, bool approx,
                int32_t* indices, float* values, int threads) {
  if (k == 0) {
    error_feedback_only(x, residual, n, threads);
    return 0;
  }
  if (n < kMinSampledElements || k > n / 8) {
    return topk_radix(x, residual, n, k, indices, values, threads);
  }

  TopkThresholds t = sample_thresholds(x, residual, n, k, approx);
  // Zeros are never selected, nor candidates: when fewer than k of the sample
  // are non-zero (sparse or embedding gradients, early steps, no error
  // feedback) the thresholds are clamped to "non-zero", and then every
  // non-zero entry is either selected or a candidate.
  t.sure_above = std::max(t.sure_above, 0);
  t.cand_above = std::max(t.cand_above, 0);
  const int ranges = range_count(n, kMinElementsPerThread, threads);
  std::vector<RangeLists> lists;
  lists.reserve(ranges);
  for (int r = 0; r < ranges; ++r) {
    const int64_t sure_cap = approx ? 2 * k + 1024 : k;
    const int64_t cand_cap = approx ? 0 : 4 * t.expected_candidates + 4096;
    lists.emplace_back(std::min(n, sure_cap), std::min(n, cand_cap));
  }
  const KernelTable& kernels = active_kernels();
  parallel_ranges(n, 64, ranges, [&](int r, int64_t begin, int64_t end) {
    kernels.topk_scan(x, residual, begin, end, t.sure_above, t.cand_above, &lists[r].buffers);
  });

  bool overflow = false;
  int64_t selected = 0;
  int64_t candidates = 0;
  for (const RangeLists& l : lists) {
    overflow = overflow || l.buffers.overflow;
    selected += l.buffers.sure_n;
    candidates += l.buffers.cand_n;
  }
  // With a zero threshold nothing non-zero was left out (barring overflow):
  // fewer than k (or the floor) selected is then the right answer.
  const bool exact_fits =
      !overflow && selected <= k && (selected + candidates >= k || t.cand_above == 0);
  const bool approx_fits = !overflow && (selected >= topk_approx_floor(k) || t.sure_above == 0);
  if (approx ? !approx_fits : !exact_fits) {
    undo(lists, residual);  // residual now holds c everywhere
    return topk_radix(nullptr, residual, n, k, indices, values, threads);
  }
  const int64_t written = approx ? finish_approx(lists, selected, k, residual, indices, values)
                                 : finish_exact(lists, k - selected, residual, indices, values);
  pad_topk(indices, values, written, k);
  return written;
}

}  // namespace hvdkit::cpu
