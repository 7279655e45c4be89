// Top-k with error feedback on the GPU.
//
// Exact: radix select on 31-bit magnitude keys in three histogram levels
// (11 + 11 + 9 bits), the first fused with c = x + residual, then one
// selection pass; ties at the threshold take tickets (reserved per tile), so
// exactly k are taken.
// Approximate: the threshold comes from a stratified sample (radix-selected
// inside one thread block), then ONE fused pass selects and updates the
// residual, capped at k; if fewer than the floor passed, up to two fix-up
// passes with lower thresholds top it up.
// Both: entries where c is zero are never taken (every threshold is at least
// the smallest non-zero key), and the slots left free are padded with (index
// 0, value -0.0), so the payload always holds k pairs. Nothing here
// synchronizes with the host: the count is written to device memory.
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cmath>

#include "core/counter_hash.h"
#include "core/cuda_ops.h"
#include "core/float_bits.h"
#include "core/layout.h"
#include "cuda/device_utils.cuh"
#include "cuda/launch.cuh"

namespace hvdkit::cuda {
namespace {

constexpr int kBins = 2048;
constexpr int kPickThreads = 1024;
constexpr int kLevels = 3;  // key bits 30..20, 19..9, 8..0
constexpr int64_t kSampleRun = 32;
constexpr int64_t kMaxSampleRuns = 2048;
constexpr int64_t kMaxSamples = kSampleRun * kMaxSampleRuns;
constexpr uint32_t kSampleSalt = 0x5eed7a11u;
constexpr uint32_t kNoBin = 0xffffffffu;

struct TopkState {
  uint32_t prefix;       // key bits decided so far (the full threshold key at the end)
  int32_t need;          // entries still to take at or below the current prefix
  int32_t count;         // output slots reserved
  int32_t ties_taken;    // tickets handed to entries equal to the threshold
  uint32_t threshold;    // approximate: take keys >= threshold
  uint32_t fallback;     // approximate: lower threshold for the first fix-up
};

struct TopkWorkspace {
  TopkState state;
  uint32_t hist[kBins];
  uint32_t sample[kMaxSamples];
};

using PickScan = cub::BlockScan<uint32_t, kPickThreads>;

// Selection passes work in tiles of kSelectThreads x kSelectItems entries and
// reserve output slots (and tie tickets) once per tile: a counter shared by the
// whole grid cannot take one atomic per warp (at 1 % density a quarter of all
// warps select something, and the atomics serialise).
constexpr int kSelectThreads = 256;
constexpr int kSelectItems = 8;
constexpr int64_t kTile = static_cast<int64_t>(kSelectThreads) * kSelectItems;
using SelectScan = cub::BlockScan<int32_t, kSelectThreads>;
using TieScan = cub::BlockScan<uint32_t, kSelectThreads>;

struct SelectShared {
  SelectScan::TempStorage scan;
  int32_t base;
  bool skip;
};

struct ExactShared {
  TieScan::TempStorage scan;
  int32_t base;         // the tile's first output slot
  int32_t taken_ties;   // how many of the tile's ties got a ticket below the budget
};

// This thread's first slot for `mine` entries; one atomicAdd on `counter` for
// the whole block, none once the counter has reached `cap` (the slots would
// all be at or past cap: nothing more is taken, and the counter cannot
// overflow however many entries pass). Every thread of the block calls it.
__device__ int32_t reserve_tile_slots(int32_t* counter, int32_t mine, int32_t cap, SelectShared& shared) {
  int32_t offset = 0;
  int32_t total = 0;
  SelectScan(shared.scan).ExclusiveSum(mine, offset, total);
  if (threadIdx.x == 0) {
    int32_t base = 0;
    if (total > 0) base = *static_cast<volatile int32_t*>(counter) >= cap ? cap : atomicAdd(counter, total);
    shared.base = base;
  }
  __syncthreads();
  const int32_t first = shared.base + offset;
  __syncthreads();  // shared is reused by the next tile
  return first;
}

struct BinChoice {
  uint32_t bin;
  uint32_t above;
};

// The bin (of `bins`, counts in descending bin order) holding the need-th
// largest entry, and how many entries lie in higher bins. All kPickThreads
// threads call it.
__device__ void find_bin(const uint32_t* counts, int bins, uint32_t need, PickScan::TempStorage& temp,
                         BinChoice* choice) {
  const int high = bins - 1 - 2 * static_cast<int>(threadIdx.x);
  const int low = high - 1;
  const uint32_t high_count = high >= 0 ? counts[high] : 0;
  const uint32_t low_count = low >= 0 ? counts[low] : 0;
  uint32_t before = 0;
  PickScan(temp).ExclusiveSum(high_count + low_count, before);
  if (high >= 0 && before < need && need <= before + high_count) {
    *choice = {static_cast<uint32_t>(high), before};
  } else if (low >= 0 && before + high_count < need && need <= before + high_count + low_count) {
    *choice = {static_cast<uint32_t>(low), before + high_count};
  }
  __syncthreads();
}

__host__ __device__ constexpr int level_bits(int level) { return level == 2 ? 9 : 11; }
__host__ __device__ constexpr int level_shift(int level) { return level == 0 ? 20 : (level == 1 ? 9 : 0); }

__device__ __forceinline__ uint32_t level_bin(uint32_t key, int level, uint32_t prefix) {
  const int shift = level_shift(level);
  const int bits = level_bits(level);
  if ((key >> (shift + bits)) != prefix) return kNoBin;
  return (key >> shift) & ((1u << bits) - 1u);
}

// Adds to a shared histogram with one atomic per group of equal lanes.
__device__ __forceinline__ void count_bin(uint32_t* hist, uint32_t bin) {
  const unsigned active = __activemask();
  if (__ballot_sync(active, bin != kNoBin) == 0) return;  // later levels: most warps hold no candidate
  const unsigned peers = __match_any_sync(active, bin);
  if (bin != kNoBin && static_cast<int>(threadIdx.x % 32) == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
}

__global__ void init_state_kernel(TopkWorkspace* ws, int32_t k) {
  ws->state = TopkState{0u, k, 0, 0, 0u, 0u};
}

// One histogram level over c; with x non-null (level 0) also c = x + residual.
// Tiles as in the selection passes: kSelectItems independent loads in flight
// per thread.
__global__ void __launch_bounds__(kSelectThreads) histogram_kernel(const float* x, float* residual, int64_t n,
                                                                   TopkWorkspace* ws, int level) {
  __shared__ uint32_t hist[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) hist[b] = 0;
  __syncthreads();
  const uint32_t prefix = ws->state.prefix;
  for (int64_t tile = blockIdx.x * kTile; tile < n; tile += static_cast<int64_t>(gridDim.x) * kTile) {
    float c[kSelectItems];
#pragma unroll
    for (int j = 0; j < kSelectItems; ++j) {
      const int64_t i = tile + j * kSelectThreads + threadIdx.x;
      c[j] = i < n ? residual[i] : 0.0f;
      if (x != nullptr && i < n) c[j] = x[i] + c[j];
    }
#pragma unroll
    for (int j = 0; j < kSelectItems; ++j) {
      const int64_t i = tile + j * kSelectThreads + threadIdx.x;
      if (i < n) {
        if (x != nullptr) residual[i] = c[j];
        count_bin(hist, level_bin(magnitude_key(c[j]), level, prefix));
      }
    }
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
    if (hist[b] != 0) atomicAdd(&ws->hist[b], hist[b]);
  }
}

// Fixes the next key bits from the level's histogram, then clears it.
__global__ void __launch_bounds__(kPickThreads) pick_bin_kernel(TopkWorkspace* ws, int level) {
  __shared__ PickScan::TempStorage temp;
  __shared__ BinChoice choice;
  find_bin(ws->hist, 1 << level_bits(level), static_cast<uint32_t>(ws->state.need), temp, &choice);
  if (threadIdx.x == 0) {
    ws->state.prefix = (ws->state.prefix << level_bits(level)) | choice.bin;
    ws->state.need -= static_cast<int32_t>(choice.above);
  }
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) ws->hist[b] = 0;
}

// Takes keys above the threshold and `need` tickets' worth of ties. Per tile:
// one block scan of (ties, above) counts packed in one word (each at most
// kTile < 2^16), one atomic for the tile's tie tickets (handed out in thread
// order inside the tile) and one for its output slots. A zero threshold means
// c has fewer than k non-zero entries: those are all taken, no zero is, and
// the free slots are padded afterwards.
__global__ void __launch_bounds__(kSelectThreads) exact_select_kernel(float* residual, int64_t n, TopkWorkspace* ws,
                                                                      int32_t* indices, float* values) {
  __shared__ ExactShared shared;
  const uint32_t threshold = ws->state.prefix;
  const int32_t ties = threshold == 0 ? 0 : ws->state.need;
  for (int64_t tile = blockIdx.x * kTile; tile < n; tile += static_cast<int64_t>(gridDim.x) * kTile) {
    float c[kSelectItems];
    bool above[kSelectItems];
    bool tied[kSelectItems];
    uint32_t mine = 0;  // (ties << 16) | above, this thread's
#pragma unroll
    for (int j = 0; j < kSelectItems; ++j) {
      const int64_t i = tile + j * kSelectThreads + threadIdx.x;
      above[j] = false;
      tied[j] = false;
      if (i < n) {
        c[j] = residual[i];
        const uint32_t key = magnitude_key(c[j]);
        above[j] = key > threshold;
        tied[j] = ties > 0 && key == threshold;
        mine += (static_cast<uint32_t>(tied[j]) << 16) + static_cast<uint32_t>(above[j]);
      }
    }
    uint32_t offset = 0;
    uint32_t total = 0;
    TieScan(shared.scan).ExclusiveSum(mine, offset, total);
    if (threadIdx.x == 0) {
      const int32_t tile_ties = static_cast<int32_t>(total >> 16);
      const int32_t tile_above = static_cast<int32_t>(total & 0xffffu);
      int32_t taken_ties = 0;
      if (tile_ties > 0) {
        // Once every ticket is gone no later tile takes a tie: skip the atomic.
        const int32_t first_ticket = *static_cast<volatile int32_t*>(&ws->state.ties_taken) >= ties
                                         ? ties
                                         : atomicAdd(&ws->state.ties_taken, tile_ties);
        taken_ties = min(max(ties - first_ticket, 0), tile_ties);
      }
      const int32_t tile_taken = tile_above + taken_ties;
      shared.base = tile_taken > 0 ? atomicAdd(&ws->state.count, tile_taken) : 0;
      shared.taken_ties = taken_ties;
    }
    __syncthreads();
    const int32_t taken_ties = shared.taken_ties;
    // Ties of lower threads in this tile hold tickets 0 .. (offset >> 16) - 1.
    int32_t tie_rank = static_cast<int32_t>(offset >> 16);
    int32_t slot = shared.base + static_cast<int32_t>(offset & 0xffffu) + min(tie_rank, taken_ties);
    __syncthreads();  // shared is reused by the next tile
#pragma unroll
    for (int j = 0; j < kSelectItems; ++j) {
      bool take = above[j];
      if (tied[j]) take = tie_rank++ < taken_ties;
      if (take) {
        const int64_t i = tile + j * kSelectThreads + threadIdx.x;
        indices[slot] = static_cast<int32_t>(i);
        values[slot] = c[j];
        residual[i] = 0.0f;
        ++slot;
      }
    }
  }
}

// Sample keys of c = x + residual: one run of kSampleRun entries at a
// pseudo-random place in each of `runs` equal strata (or every entry).
__global__ void sample_kernel(const float* x, const float* residual, int64_t n, int64_t runs, uint32_t* sample,
                              int64_t samples) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < samples; t += stride) {
    int64_t at = t;
    if (runs > 0) {
      const int64_t run = t / kSampleRun;
      const int64_t begin = run * n / runs;
      const int64_t room = (run + 1) * n / runs - begin - kSampleRun + 1;
      at = begin + static_cast<int64_t>(mix32(static_cast<uint32_t>(run) ^ kSampleSalt) % room) + t % kSampleRun;
    }
    sample[t] = magnitude_key(x[at] + residual[at]);
  }
}

// The rank-th largest of the sample keys (1-based), by radix select in one
// thread block.
__device__ uint32_t sample_key_of_rank(const uint32_t* sample, int64_t samples, uint32_t rank, uint32_t* hist,
                                       PickScan::TempStorage& temp, BinChoice* choice) {
  uint32_t prefix = 0;
  uint32_t need = rank;
  for (int level = 0; level < kLevels; ++level) {
    for (int b = threadIdx.x; b < kBins; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < samples; i += blockDim.x) count_bin(hist, level_bin(sample[i], level, prefix));
    __syncthreads();
    find_bin(hist, 1 << level_bits(level), need, temp, choice);
    prefix = (prefix << level_bits(level)) | choice->bin;
    need -= choice->above;
    __syncthreads();
  }
  return prefix;
}

// Two blocks, side by side: block 0 finds the threshold, block 1 the fallback.
__global__ void __launch_bounds__(kPickThreads) sample_threshold_kernel(TopkWorkspace* ws, int64_t samples,
                                                                        uint32_t rank, uint32_t fallback_rank) {
  __shared__ uint32_t hist[kBins];
  __shared__ PickScan::TempStorage temp;
  __shared__ BinChoice choice;
  const bool fallback = blockIdx.x == 1;
  const uint32_t key = sample_key_of_rank(ws->sample, samples, fallback ? fallback_rank : rank, hist, temp, &choice);
  if (threadIdx.x == 0) (fallback ? ws->state.fallback : ws->state.threshold) = key;
}

// Takes entries with key >= threshold into free slots below k; the rest stays
// in the residual. Every threshold is at least 1, the smallest non-zero key:
// zeros are never taken (when fewer than k of the sample are non-zero the
// sampled threshold is 0, and without the clamp every entry would pass and the
// first k slots, mostly zeros, would be sent), and entries already taken, now
// 0, are never taken twice. Pass 0: c = x + residual; fix-up passes (x null)
// run only while fewer than `floor` were taken and the previous pass's
// threshold was above 1 (at 1 every non-zero entry was already considered).
__global__ void __launch_bounds__(kSelectThreads) approx_select_kernel(const float* x, float* residual, int64_t n,
                                                                       TopkWorkspace* ws, int32_t k, int32_t floor,
                                                                       int pass, int32_t* indices, float* values) {
  __shared__ SelectShared shared;
  uint32_t threshold = max(ws->state.threshold, 1u);
  if (pass > 0) {
    // One reading per block: the block's threads must all go on or all stop.
    if (threadIdx.x == 0) {
      const uint32_t previous = pass == 1 ? ws->state.threshold : ws->state.fallback;
      shared.skip = ws->state.count >= floor || previous <= 1u;
    }
    __syncthreads();
    if (shared.skip) return;
    threshold = pass == 1 ? max(ws->state.fallback, 1u) : 1u;
  }
  for (int64_t tile = blockIdx.x * kTile; tile < n; tile += static_cast<int64_t>(gridDim.x) * kTile) {
    float c[kSelectItems];
    bool passes[kSelectItems];
    int32_t mine = 0;
#pragma unroll
    for (int j = 0; j < kSelectItems; ++j) {
      const int64_t i = tile + j * kSelectThreads + threadIdx.x;
      passes[j] = false;
      if (i < n) {
        c[j] = residual[i];
        if (pass == 0) c[j] = x[i] + c[j];
        passes[j] = magnitude_key(c[j]) >= threshold;
        mine += passes[j];
      }
    }
    int32_t slot = reserve_tile_slots(&ws->state.count, mine, k, shared);
#pragma unroll
    for (int j = 0; j < kSelectItems; ++j) {
      const int64_t i = tile + j * kSelectThreads + threadIdx.x;
      const bool take = passes[j] && slot < k;
      if (take) {
        indices[slot] = static_cast<int32_t>(i);
        values[slot] = c[j];
      }
      slot += passes[j];
      if (i < n && (take || pass == 0)) residual[i] = take ? 0.0f : c[j];
    }
  }
}

// Slots [taken, k) get the padding pair (index 0, value -0.0): adding -0.0
// leaves any float unchanged, so decoders need not know about padding, and
// the payload has the same size on every rank and every step.
__global__ void pad_kernel(const TopkWorkspace* ws, int32_t k, int32_t* indices, float* values) {
  const int64_t taken = min(ws->state.count, k);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = taken + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < k; s += stride) {
    indices[s] = 0;
    values[s] = -0.0f;
  }
}

__global__ void write_count_kernel(const TopkWorkspace* ws, int32_t k, int32_t* count) {
  *count = min(ws->state.count, k);
}

void ef_add_only(const float* x, float* residual, int64_t n, TopkWorkspace* ws, cudaStream_t stream) {
  // Level-0 histogram pass of an empty selection: c = x + residual, nothing else used.
  histogram_kernel<<<grid_for(n, kTile), kSelectThreads, 0, stream>>>(x, residual, n, ws, 0);
  check_launch("histogram_kernel");
}

void exact_topk(const float* x, float* residual, int64_t n, TopkWorkspace* ws, int32_t* indices, float* values,
                cudaStream_t stream) {
  for (int level = 0; level < kLevels; ++level) {
    histogram_kernel<<<grid_for(n, kTile), kSelectThreads, 0, stream>>>(level == 0 ? x : nullptr, residual, n, ws,
                                                                        level);
    check_launch("histogram_kernel");
    pick_bin_kernel<<<1, kPickThreads, 0, stream>>>(ws, level);
    check_launch("pick_bin_kernel");
  }
  exact_select_kernel<<<grid_for(n, kTile), kSelectThreads, 0, stream>>>(residual, n, ws, indices, values);
  check_launch("exact_select_kernel");
}

void approx_topk(const float* x, float* residual, int64_t n, int64_t k, TopkWorkspace* ws, int32_t* indices,
                 float* values, cudaStream_t stream) {
  const int64_t runs = n > kMaxSamples ? kMaxSampleRuns : 0;
  const int64_t samples = runs > 0 ? kMaxSamples : n;
  sample_kernel<<<grid_for(samples), kThreads, 0, stream>>>(x, residual, n, runs, ws->sample, samples);
  check_launch("sample_kernel");
  const double expected = static_cast<double>(k) * static_cast<double>(samples) / static_cast<double>(n);
  const int64_t rank = std::min<int64_t>(samples, std::max<int64_t>(1, std::llround(expected)));
  const int64_t fallback_rank = std::min<int64_t>(samples, 4 * rank + 16);
  sample_threshold_kernel<<<2, kPickThreads, 0, stream>>>(ws, samples, static_cast<uint32_t>(rank),
                                                          static_cast<uint32_t>(fallback_rank));
  check_launch("sample_threshold_kernel");
  const int32_t floor = static_cast<int32_t>(topk_approx_floor(k));
  for (int pass = 0; pass < 3; ++pass) {
    approx_select_kernel<<<grid_for(n, kTile), kSelectThreads, 0, stream>>>(x, residual, n, ws, static_cast<int32_t>(k),
                                                                            floor, pass, indices, values);
    check_launch("approx_select_kernel");
  }
}

}  // namespace

size_t topk_workspace_bytes() { return sizeof(TopkWorkspace); }

void topk_ef(const float* x, float* residual, int64_t n, int64_t k, bool approx, int32_t* indices, float* values,
             int32_t* count, void* workspace, cudaStream_t stream) {
  auto* ws = static_cast<TopkWorkspace*>(workspace);
  init_state_kernel<<<1, 1, 0, stream>>>(ws, static_cast<int32_t>(k));
  check_launch("init_state_kernel");
  check_cuda(cudaMemsetAsync(ws->hist, 0, sizeof(ws->hist), stream), "cudaMemsetAsync");
  if (n > 0) {
    if (k == 0) {
      ef_add_only(x, residual, n, ws, stream);
    } else if (approx) {
      approx_topk(x, residual, n, k, ws, indices, values, stream);
    } else {
      exact_topk(x, residual, n, ws, indices, values, stream);
    }
  }
  if (k > 0) {
    pad_kernel<<<grid_for(k), kThreads, 0, stream>>>(ws, static_cast<int32_t>(k), indices, values);
    check_launch("pad_kernel");
  }
  if (count != nullptr) {
    write_count_kernel<<<1, 1, 0, stream>>>(ws, static_cast<int32_t>(k), count);
    check_launch("write_count_kernel");
  }
}

}  // namespace hvdkit::cuda
