// The single-threaded inner loops that exist once per instruction set
// (scalar, AVX2, AVX-512). Each kernels_<isa>.cpp fills one table; dispatch.cpp
// picks the best one this CPU runs. Threading and bookkeeping stay outside, in
// plain portable code.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace hvdkit::cpu {

// Output lists of one top-k scan over a range. "Sure" entries are selected
// (their residual is zeroed, their value kept); "candidates" straddle the
// threshold and are decided later. When a list is full, `overflow` is set and
// the entry stays in the residual instead.
struct TopkScanBuffers {
  int32_t* sure_idx;
  float* sure_val;
  int64_t sure_cap;
  int64_t sure_n;
  int32_t* cand_idx;
  int64_t cand_cap;
  int64_t cand_n;
  bool overflow;
};

struct KernelTable {
  const char* name;

  // y[i] = saturate_to(y_dtype, x[i] * scale (+ y[i])); returns true if a
  // result before saturation is NaN or +-Inf.
  bool (*convert)(const void* x, DType x_dtype, void* y, DType y_dtype, int64_t n, float scale,
                  bool accumulate);

  // Blocks [first_block, end_block) of x[0, n).
  void (*quantize_int8)(const float* x, int64_t n, int64_t block, int64_t first_block,
                        int64_t end_block, bool stochastic, uint32_t key, int8_t* q,
                        float* scales);
  // Elements [begin, end).
  void (*dequantize_int8)(const int8_t* q, const float* scales, int64_t block, int64_t begin,
                          int64_t end, float* out, bool accumulate);

  // Blocks [first_block, end_block) of x[0, n); block is a multiple of 8.
  void (*sign_ef)(const float* x, float* residual, int64_t n, int64_t block, int64_t first_block,
                  int64_t end_block, uint8_t* bits, float* scales);
  // Elements [begin, end), begin a multiple of 8.
  void (*sign_decode)(const uint8_t* bits, const float* scales, int64_t ranks, int64_t n,
                      int64_t block, int64_t begin, int64_t end, float* out, bool accumulate);

  // Elements [begin, end): c = x + residual (or residual alone when x is
  // null); magnitude key > sure_above selects, sure_above >= key > cand_above
  // makes a candidate; residual becomes 0 where selected, c elsewhere.
  void (*topk_scan)(const float* x, float* residual, int64_t begin, int64_t end,
                    int32_t sure_above, int32_t cand_above, TopkScanBuffers* buffers);
};

extern const KernelTable kScalarKernels;
extern const KernelTable kAvx2Kernels;
extern const KernelTable kAvx512Kernels;

}  // namespace hvdkit::cpu
