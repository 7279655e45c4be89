// CPU kernels on raw pointers: the framework-neutral API that the torch (and
// later TensorFlow) bindings call. Callers validate shapes, dtypes and ranges;
// every array is contiguous; `threads` is the most worker threads to use.
// Semantics of each op are documented in hvdkit/ops.py and pinned down by the
// pure-torch references in hvdkit/ops_reference.py.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor_ref.h"

namespace hvdkit::cpu {

// flat[offset_i + j] = convert(tensors[i][j] * scale), tensors laid end to end.
// Returns true when a value of x * scale is NaN or +-Inf.
bool pack(const TensorRef* tensors, int64_t count, void* flat, DType flat_dtype, float scale,
          int threads);

// tensors[i][j] = convert(flat[offset_i + j] * scale (+ tensors[i][j])).
void unpack(const void* flat, DType flat_dtype, const TensorRef* tensors, int64_t count,
            float scale, bool accumulate, int threads);

// Blockwise absmax int8: scales[b] = absmax_b / 127, q = round(x / scales[b]).
void quantize_int8(const float* x, int64_t n, int64_t block, bool stochastic, uint64_t seed,
                   int8_t* q, float* scales, int threads);
void dequantize_int8(const int8_t* q, const float* scales, int64_t n, int64_t block, float* out,
                     bool accumulate, int threads);

// One-bit scaled sign with error feedback; block is a positive multiple of 8.
void sign_ef(const float* x, float* residual, int64_t n, int64_t block, uint8_t* bits,
             float* scales, int threads);
// out (+)= sum over `ranks` payloads; bits is [ranks][ceil(n/8)], scales
// [ranks][ceil(n/block)].
void sign_decode(const uint8_t* bits, const float* scales, int64_t ranks, int64_t n,
                 int64_t block, float* out, bool accumulate, int threads);

// Top-k by magnitude of c = x + residual with error feedback. Writes exactly
// k (index, value) pairs: the selected entries (residual zeroed there), then
// padding pairs (index 0, value -0.0) in the free slots (adding -0.0 changes
// nothing, and the residual is not touched for them). Entries where c is zero
// are never selected. Returns how many were selected: exact, min(k, non-zero
// entries of c); approximate, at least min(topk_approx_floor(k), non-zero
// entries of c) and at most k.
int64_t topk_ef(const float* x, float* residual, int64_t n, int64_t k, bool approx,
                int32_t* indices, float* values, int threads);

// The k random-k indices for (n, seed) and the values of x there.
void randomk(const void* x, DType dtype, int64_t n, int64_t k, uint64_t seed, int32_t* indices,
             void* values, int threads);

// out[indices[i]] += values[i] in order. Returns false, adding nothing, when
// an index is outside [0, n); with `poison` it then sets out[0] to NaN (when
// n > 0) so that a non-finite check downstream sees the bad payload.
bool scatter_add(const int32_t* indices, const float* values, int64_t count, float* out,
                 int64_t n, bool poison, int threads);

// Instruction sets the CPU kernels were built for and this CPU runs, best first.
std::vector<std::string> available_isas();
// The instruction set in use (the best available, or HVDKIT_CPU_ISA).
std::string active_isa();
// Switches instruction set (tests and benchmarks); false if not available.
bool set_active_isa(const std::string& name);

}  // namespace hvdkit::cpu
