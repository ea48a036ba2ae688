// Launch and reduction helpers shared by pycnn's CUDA kernels.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>
#include <utility>

namespace pycnn::cuda {

// Threads per block of every kernel. A multiple of the warp size, as
// block_sum requires.
constexpr int kThreadsPerBlock = 256;

// Blocks for a grid-stride loop over `count` items (count >= 1). The cap keeps
// the grid small enough to launch on any device; each thread then loops over
// several items, which is why every elementwise kernel uses a grid-stride loop.
inline unsigned int blocks_for(int64_t count) {
  constexpr int64_t kMaxBlocks = int64_t{1} << 20;
  return static_cast<unsigned int>(std::min((count + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks));
}

// The dtypes of every CUDA kernel: float32, float64, float16 and bfloat16 (the
// last two accumulate in float32, at::opmath_type). Used as
// AT_DISPATCH_FLOATING_TYPES: PYCNN_DISPATCH_FLOATING_TYPES(dtype, "name", [&] { ... }).
#define PYCNN_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Launches `kernel` with `grid` blocks of kThreadsPerBlock threads on the
// current stream, and checks that the launch succeeded.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, Args&&... args) {
  kernel<<<grid, kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// for (index = this thread's first item; index < count; index += threads in the grid).
// 64-bit so that tensors with more than 2^31 elements are indexed correctly.
#define PYCNN_GRID_STRIDE_LOOP(index, count)                                                         \
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < (count); \
       index += static_cast<int64_t>(blockDim.x) * gridDim.x)

// The same loop with an index of type index_t (int32_t or int64_t, see
// PYCNN_DISPATCH_INDEX_TYPE): 32-bit division and modulo are several times
// cheaper than 64-bit ones, which the elementwise kernels do per item.
#define PYCNN_GRID_STRIDE_LOOP_T(index_t, index, count)                                                             \
  for (index_t index =                                                                                              \
           static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) + static_cast<index_t>(threadIdx.x); \
       index < (count); index += static_cast<index_t>(blockDim.x) * static_cast<index_t>(gridDim.x))

// Runs the lambda __VA_ARGS__ with `index_t` defined as int32_t when
// USE_32BIT (see fits_32bit_indexing in pycnn/indexing.h), else int64_t:
//   PYCNN_DISPATCH_INDEX_TYPE(fits_32bit_indexing(...), [&] { launch(kernel<scalar_t, index_t>, ...); });
#define PYCNN_DISPATCH_INDEX_TYPE(USE_32BIT, ...) \
  [&] {                                           \
    if (USE_32BIT) {                              \
      using index_t = int32_t;                    \
      return __VA_ARGS__();                       \
    } else {                                      \
      using index_t = int64_t;                    \
      return __VA_ARGS__();                       \
    }                                             \
  }()

// The number of threads in a grid of blocks_for(count) blocks.
inline int64_t grid_threads(int64_t count) {
  return static_cast<int64_t>(blocks_for(count)) * kThreadsPerBlock;
}

// Sum of `value` over the 32 lanes of a warp; the result is valid in lane 0.
// All lanes of the warp must call it.
template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
  for (int offset = C10_WARP_SIZE / 2; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

// Sum of `value` over a block of kThreadsPerBlock threads; the result is valid
// in thread 0. All threads of the block must call it.
template <typename T>
__device__ T block_sum(T value) {
  __shared__ T warp_sums[kThreadsPerBlock / C10_WARP_SIZE];
  const int lane = threadIdx.x % C10_WARP_SIZE;
  const int warp = threadIdx.x / C10_WARP_SIZE;
  value = warp_sum(value);
  __syncthreads();  // a previous block_sum in the same kernel may still be reading warp_sums
  if (lane == 0) {
    warp_sums[warp] = value;
  }
  __syncthreads();
  if (warp == 0) {
    value = lane < kThreadsPerBlock / C10_WARP_SIZE ? warp_sums[lane] : T(0);
    value = warp_sum(value);
  }
  return value;
}

// The kernels compute on NCHW data; an output takes the memory format of the
// tensor it follows (the input; grad_output for corr2d's grad_input), as
// native's do: a channels_last input gets its result back channels_last (one
// copy).
inline at::Tensor with_format_of(const at::Tensor& result, const at::Tensor& like) {
  return result.contiguous(like.suggest_memory_format());
}

}  // namespace pycnn::cuda
