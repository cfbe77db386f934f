// heatmap_loss: the fused target-and-loss of h3r_kernels.reference.heatmap_loss, and its backward.
//
// Forward, in one pass over the logits: a group of `threads_per_map` threads (one to eight
// warps) per map builds the keypoint's target profiles in shared memory, reads the logits
// with 16-byte loads, writes the gradient (for an incoming gradient of 1) and reduces the
// map's loss in a fixed order into per_map[map]. reduction="mean" first counts the
// contributing keypoints on the device (loss_count_kernel; the scale is 1 / (count * H * W));
// "sum" and "mean" then add the per-map sums in a fixed order (loss_reduce_kernel, in chunks),
// so the value is deterministic.
//
// A map that does not contribute (invisible, target off the map, or weight 0: the launcher
// folds weight != 0 into `visible`) is selected out, not multiplied by 0: its loss and
// gradient are exactly 0 whatever its logits hold (NaN, inf). A contributing map's summed
// loss is multiplied by its weight, its gradient by weight * scale.
#include "h3r_common.cuh"

#if !defined(H3R_LOSS_BCE) || !defined(H3R_LOSS_MSE)
#error "compile with the -D defines of h3r_kernels.spec.c_defines() (H3R_LOSS_*)"
#endif

// reduction="mean": adds the number of contributing keypoints to *count (zeroed by the caller).
// Integer atomics, one per block: the total does not depend on the order of the blocks.
__global__ void __launch_bounds__(H3R_BLOCK) loss_count_kernel(
    unsigned long long* __restrict__ count,
    const float* __restrict__ keypoints, const unsigned char* __restrict__ visible,
    long long num_maps, int num_keypoints, int height, int width, int rounding, unsigned int seed) {
    using namespace h3r;
    __shared__ unsigned long long counts[H3R_BLOCK];
    unsigned long long mine = 0;
    for (long long map = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; map < num_maps;
         map += static_cast<long long>(gridDim.x) * blockDim.x) {
        bool contributes;
        map_target(keypoints, visible, map, num_keypoints, height, width, rounding, false, seed, &contributes);
        mine += contributes ? 1u : 0u;
    }
    counts[threadIdx.x] = mine;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) counts[threadIdx.x] += counts[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0 && counts[0] != 0) atomicAdd(count, counts[0]);
}

// The scale of reduction="mean", as the reference: 1 / max(count * H * W, 1), count converted first.
template <typename A>
__device__ __forceinline__ A mean_scale(const unsigned long long* count, int map_size) {
    const A pixels = static_cast<A>(*count) * static_cast<A>(map_size);
    return A(1) / (pixels < A(1) ? A(1) : pixels);
}

template <typename T>
__global__ void __launch_bounds__(H3R_BLOCK) loss_kernel(
    const T* __restrict__ logits,                // (num_maps, height, width)
    T* __restrict__ grad,                        // (num_maps, height, width), or null: no gradient
    typename h3r::Storage<T>::acc* __restrict__ per_map,  // (num_maps,) each map's summed loss
    const unsigned long long* __restrict__ mean_count,  // () contributing keypoints ("mean"), or null: scale 1
    const float* __restrict__ keypoints,         // (num_maps, 2), (x, y) in heatmap pixels
    const unsigned char* __restrict__ visible,   // (num_maps,) bool, or null: all visible
    const typename h3r::Storage<T>::acc* __restrict__ weight,  // (num_maps,) per-keypoint weight, or null: 1
    long long num_maps, int num_keypoints, int height, int width,
    int rounding, unsigned int seed, int gaussian, float gauss_scale,
    int loss, int threads_per_map,               // 32, 64, 128 or 256
    int vectorised) {                            // pointers 16-byte aligned and H*W*sizeof(T) % 16 == 0
    using namespace h3r;
    typedef typename Storage<T>::acc A;
    extern __shared__ float profiles[];          // maps_per_block * (height + width) floats
    __shared__ MapTarget targets[H3R_BLOCK / 32];
    __shared__ bool live_maps[H3R_BLOCK / 32];   // whether each map contributes
    __shared__ A map_weights[H3R_BLOCK / 32];    // each map's weight (1 without weights)
    __shared__ A warp_sums[H3R_BLOCK / 32];

    const int maps_per_block = blockDim.x / threads_per_map;
    const int group = threadIdx.x / threads_per_map;
    const int rank = threadIdx.x - group * threads_per_map;
    const int lane = threadIdx.x & 31;
    const int map_size = height * width;
    const int profile_size = height + width;
    const A scale = mean_count == nullptr ? A(1) : mean_scale<A>(mean_count, map_size);
    float* my_profiles = profiles + group * profile_size;

    for (long long first_map = static_cast<long long>(blockIdx.x) * maps_per_block; first_map < num_maps;
         first_map += static_cast<long long>(gridDim.x) * maps_per_block) {
        const long long map = first_map + group;
        const bool active = map < num_maps;
        if (active && rank == 0) {
            bool contributes;
            targets[group] = map_target(keypoints, visible, map, num_keypoints, height, width, rounding, false,
                                        seed, &contributes);
            live_maps[group] = contributes;
            map_weights[group] = weight == nullptr ? A(1) : weight[map];
        }
        __syncthreads();
        if (active) fill_profiles(my_profiles, targets[group], height, width, gaussian != 0, gauss_scale, rank,
                                  threads_per_map);
        __syncthreads();

        A total = A(0);
        if (active) {
            const bool live = live_maps[group];
            // The gradient factor, as the reference: weight * scale (1 * scale without weights,
            // weight * 1 without "mean"), exactly the reference's factor.
            const A factor = map_weights[group] * scale;
            const T* z_map = logits + map * map_size;
            T* g_map = grad == nullptr ? nullptr : grad + map * map_size;
            // One pixel: the reference's where(live, pixel_loss, 0) and where(live, pixel_grad * factor, 0).
            auto pixel = [&](T stored, int r, int c, T* out) {
                const A z = Storage<T>::load(stored);
                const A t = static_cast<A>(my_profiles[r] * my_profiles[height + c]);
                A value, slope;
                if (loss == H3R_LOSS_BCE) {
                    // One exponential for both: e = exp(-|z|), sigmoid(z) = (z >= 0 ? 1 : e) / (1 + e).
                    const A e = exp_(-abs_(z));
                    value = clamp_min_zero(z) - z * t + log1p_(e);
                    slope = (z >= A(0) ? A(1) : e) / (A(1) + e) - t;
                } else {
                    const A d = z - t;
                    value = d * d;
                    slope = A(2) * d;
                }
                total += live ? value : A(0);
                if (out != nullptr) *out = Storage<T>::store(live ? slope * factor : A(0));
            };
            if (vectorised) {
                const int vec = Pack<T>::size;
                for_each_pack(z_map, map_size / vec, rank, threads_per_map, [&](int i, const Pack<T>& in) {
                    Pack<T> out;
                    int r = (i * vec) / width;
                    int c = i * vec - r * width;
#pragma unroll
                    for (int j = 0; j < vec; ++j) {
                        pixel(in.v[j], r, c, &out.v[j]);
                        if (++c == width) {
                            c = 0;
                            ++r;
                        }
                    }
                    if (g_map != nullptr) *reinterpret_cast<Pack<T>*>(g_map + i * vec) = out;
                });
            } else {
                for (int e = rank; e < map_size; e += threads_per_map) {
                    const int r = e / width;
                    pixel(z_map[e], r, e - r * width, g_map == nullptr ? nullptr : g_map + e);
                }
            }
        }

        // The map's sum: within each warp, then the group's warps in order.
        total = warp_sum(total);
        if (lane == 0) warp_sums[threadIdx.x / 32] = total;
        __syncthreads();
        if (active && rank == 0) {
            A sum = A(0);
            for (int w = 0; w < threads_per_map / 32; ++w) sum += warp_sums[threadIdx.x / 32 + w];
            per_map[map] = weight == nullptr ? sum : (live_maps[group] ? sum * map_weights[group] : A(0));
        }
        __syncthreads();  // the next maps overwrite targets, profiles and warp_sums
    }
}

// Sums of H3R_REDUCE_CHUNK consecutive values, one per block: out[b] = sum(in[b * CHUNK ..]),
// times the "mean" scale when mean_count is not null. The launcher repeats it until one value
// is left; the partition is fixed, so the value does not depend on the device or the timing.
static_assert(H3R_REDUCE_CHUNK % H3R_BLOCK == 0, "H3R_REDUCE_CHUNK: a whole number of values per thread");

template <typename A>
__global__ void __launch_bounds__(H3R_BLOCK) loss_reduce_kernel(
    A* __restrict__ out,                         // (ceil(count / H3R_REDUCE_CHUNK),)
    const A* __restrict__ in, long long count,
    const unsigned long long* __restrict__ mean_count,  // () or null: scale 1
    int map_size) {
    __shared__ A sums[H3R_BLOCK];
    const long long start = static_cast<long long>(blockIdx.x) * H3R_REDUCE_CHUNK + threadIdx.x;
    A values[H3R_REDUCE_CHUNK / H3R_BLOCK];
#pragma unroll
    for (int j = 0; j < H3R_REDUCE_CHUNK / H3R_BLOCK; ++j) {
        const long long i = start + static_cast<long long>(j) * H3R_BLOCK;
        values[j] = i < count ? in[i] : A(0);
    }
    A sum = A(0);
#pragma unroll
    for (int j = 0; j < H3R_REDUCE_CHUNK / H3R_BLOCK; ++j) sum += values[j];
    sums[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        out[blockIdx.x] = mean_count == nullptr ? sums[0] : sums[0] * mean_scale<A>(mean_count, map_size);
}

// heatmap_loss_backward (out != grad) and its in-place form scale_grad_ (out == grad): out = grad
// * grad_output, per map ("none": grad_output is (B, K)) or by one scalar, computed in the
// accumulation type as the reference. In place, maps whose factor is exactly 1 are not
// touched, so the usual loss.backward() makes no pass over the gradient.
template <typename T>
__global__ void __launch_bounds__(H3R_BLOCK) loss_backward_kernel(
    T* out, const T* grad,                       // (num_maps, map_size); may be the same tensor
    const typename h3r::Storage<T>::acc* __restrict__ grad_output,  // (num_maps,) or ()
    long long num_maps, int map_size, int per_map,
    int threads_per_map,                         // 32, 64, 128 or 256
    int vectorised) {                            // both pointers 16-byte aligned and map_size*sizeof(T) % 16 == 0
    using namespace h3r;
    typedef typename Storage<T>::acc A;
    const int maps_per_block = blockDim.x / threads_per_map;
    const int group = threadIdx.x / threads_per_map;
    const int rank = threadIdx.x - group * threads_per_map;
    const int vec = Pack<T>::size;
    const bool in_place = out == grad;
    for (long long map = static_cast<long long>(blockIdx.x) * maps_per_block + group; map < num_maps;
         map += static_cast<long long>(gridDim.x) * maps_per_block) {
        const A factor = grad_output[per_map ? map : 0];
        if (in_place && factor == A(1)) continue;
        const T* g = grad + map * map_size;
        T* o = out + map * map_size;
        if (vectorised) {
            // In place (o == g) each pack is written after it was loaded, as before the helper.
            for_each_pack(g, map_size / vec, rank, threads_per_map, [&](int i, const Pack<T>& in) {
                Pack<T> result;
#pragma unroll
                for (int j = 0; j < vec; ++j) result.v[j] = Storage<T>::store(Storage<T>::load(in.v[j]) * factor);
                *reinterpret_cast<Pack<T>*>(o + i * vec) = result;
            });
        } else {
            for (int e = rank; e < map_size; e += threads_per_map) o[e] = Storage<T>::store(Storage<T>::load(g[e]) * factor);
        }
    }
}

#ifdef H3R_EXPLICIT_INSTANTIATION  // for `nvcc -ptx` (tests/test_csrc_compile.py); NVRTC uses name expressions
#define H3R_INSTANTIATE(T)                                                                                      \
    template __global__ void loss_kernel<T>(const T*, T*, h3r::Storage<T>::acc*, const unsigned long long*,     \
                                            const float*, const unsigned char*, const h3r::Storage<T>::acc*,    \
                                            long long, int, int, int, int, unsigned int, int, float, int, int, int); \
    template __global__ void loss_backward_kernel<T>(T*, const T*, const h3r::Storage<T>::acc*, long long, int, \
                                                     int, int, int);
H3R_INSTANTIATE(float)
H3R_INSTANTIATE(double)
H3R_INSTANTIATE(h3r::Half)
H3R_INSTANTIATE(h3r::BFloat16)
#undef H3R_INSTANTIATE
#define H3R_INSTANTIATE_ACC(A) \
    template __global__ void loss_reduce_kernel<A>(A*, const A*, long long, const unsigned long long*, int);
H3R_INSTANTIATE_ACC(float)
H3R_INSTANTIATE_ACC(double)
#undef H3R_INSTANTIATE_ACC
#endif
