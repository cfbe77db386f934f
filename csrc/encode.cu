// encode: target heatmaps (B, K, H, W) of keypoints (B, K, 2), as h3r_kernels.reference.encode.
//
// Each block renders groups of `maps_per_block` consecutive maps (grid-stride over groups):
// one thread per map works out the keypoint's target (random rounding included), the block
// fills the maps' 1-D row and column profiles in shared memory, then writes the group's
// contiguous span of the output with 16-byte stores, target[r][c] = row[r] * col[c].
#include "h3r_common.cuh"

template <typename T>
__global__ void __launch_bounds__(H3R_BLOCK) encode_kernel(
    T* __restrict__ out,                         // (num_maps, height, width)
    const float* __restrict__ keypoints,         // (num_maps, 2), (x, y) in heatmap pixels
    const unsigned char* __restrict__ visible,   // (num_maps,) bool, or null: all visible
    long long num_maps, int num_keypoints, int height, int width,
    int rounding, int expected, unsigned int seed,
    int gaussian, float gauss_scale,             // sigma > 0, and float32(-0.5 / sigma^2)
    int maps_per_block) {                        // 1 .. H3R_MAX_MAPS_PER_BLOCK
    using namespace h3r;
    extern __shared__ float profiles[];          // maps_per_block * (height + width) floats
    __shared__ MapTarget targets[H3R_MAX_MAPS_PER_BLOCK];

    const int map_size = height * width;
    const int profile_size = height + width;
    const int vec = Pack<T>::size;
    for (long long first_map = static_cast<long long>(blockIdx.x) * maps_per_block; first_map < num_maps;
         first_map += static_cast<long long>(gridDim.x) * maps_per_block) {
        const int maps = static_cast<int>(min(static_cast<long long>(maps_per_block), num_maps - first_map));
        for (int m = threadIdx.x; m < maps; m += blockDim.x)
            targets[m] = map_target(keypoints, visible, first_map + m, num_keypoints, height, width, rounding,
                                    expected != 0, seed, nullptr);
        __syncthreads();
        for (int j = threadIdx.x; j < maps * profile_size; j += blockDim.x) {
            const int m = j / profile_size;
            const int p = j - m * profile_size;
            profiles[j] = p < height ? profile_value(targets[m].row, p, gaussian != 0, gauss_scale)
                                     : profile_value(targets[m].col, p - height, gaussian != 0, gauss_scale);
        }
        __syncthreads();

        // The group's span out[start .. start + length): a scalar head up to the first 16-byte
        // boundary, whole Packs, a scalar tail.
        T* span = out + first_map * map_size;
        const int length = maps * map_size;
        const int misaligned = static_cast<int>((reinterpret_cast<unsigned long long>(span) % 16) / sizeof(T));
        const int head = min(length, misaligned == 0 ? 0 : vec - misaligned);
        const int packs = (length - head) / vec;
        const int tail_start = head + packs * vec;
        for (int i = threadIdx.x; i < head + (length - tail_start); i += blockDim.x) {
            const int e = i < head ? i : tail_start + (i - head);
            const int m = e / map_size;
            const int pixel = e - m * map_size;
            const int r = pixel / width;
            const int c = pixel - r * width;
            const float* p = profiles + m * profile_size;
            span[e] = Storage<T>::store(static_cast<typename Storage<T>::acc>(p[r] * p[height + c]));
        }
        for (int i = threadIdx.x; i < packs; i += blockDim.x) {
            const int e = head + i * vec;
            int m = e / map_size;
            const int pixel = e - m * map_size;
            int r = pixel / width;
            int c = pixel - r * width;
            Pack<T> pack;
#pragma unroll
            for (int j = 0; j < vec; ++j) {
                const float* p = profiles + m * profile_size;
                pack.v[j] = Storage<T>::store(static_cast<typename Storage<T>::acc>(p[r] * p[height + c]));
                if (++c == width) {
                    c = 0;
                    if (++r == height) {
                        r = 0;
                        ++m;
                    }
                }
            }
            *reinterpret_cast<Pack<T>*>(span + e) = pack;
        }
        __syncthreads();  // the next group overwrites targets and profiles
    }
}

#ifdef H3R_EXPLICIT_INSTANTIATION  // for `nvcc -ptx` (tests/test_csrc_compile.py); NVRTC uses name expressions
#define H3R_INSTANTIATE(T)                                                                                    \
    template __global__ void encode_kernel<T>(T*, const float*, const unsigned char*, long long, int, int, int, \
                                              int, int, unsigned int, int, float, int);
H3R_INSTANTIATE(float)
H3R_INSTANTIATE(double)
H3R_INSTANTIATE(h3r::Half)
H3R_INSTANTIATE(h3r::BFloat16)
#undef H3R_INSTANTIATE
#endif
