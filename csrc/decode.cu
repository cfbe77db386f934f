// decode: coordinates, scores and selected cells of heatmaps, as h3r_kernels.reference.decode,
// and decode_backward.
//
// A group of `threads_per_map` threads (one to eight warps) reads one map with 16-byte loads.
// "topk" (k >= 2): each warp keeps a sorted list of its k best cells, lane i holding the i-th
// (a candidate better than the list's last entry is inserted with a ballot and a shuffle),
// and the group's first warp merges the other warps' lists. "argmax", "local" and k = 1:
// each thread keeps its best cell, reduced by warp shuffles, then across the group's warps.
// The order is strict and total (larger value first, NaN above all, ties to the lower flat
// index), so the result does not depend on the thread layout. The first warp then weighs
// the selected cells (softmax or linear) and writes the outputs.
#include "h3r_common.cuh"

#if !defined(H3R_METHOD_TOPK) || !defined(H3R_METHOD_LOCAL) || !defined(H3R_METHOD_ARGMAX) || \
    !defined(H3R_WEIGHTING_SOFTMAX) || !defined(H3R_WEIGHTING_LINEAR)
#error "compile with the -D defines of h3r_kernels.spec.c_defines() (H3R_METHOD_*, H3R_WEIGHTING_*)"
#endif

namespace {

using h3r::ranks_before;

// Insert (value, index) into the warp's sorted list (lane i < k holds entry i; lanes >= k
// are scratch) and refresh the threshold, the list's last entry.
template <typename A>
__device__ __forceinline__ void list_insert(A& value, int& index, A& last_value, int& last_index, A new_value,
                                            int new_index, int k, int lane) {
    const bool before = lane < k && ranks_before(value, index, new_value, new_index);
    const int position = __popc(__ballot_sync(H3R_FULL_MASK, before));  // entries before the new one
    if (position < k) {
        const A up_value = __shfl_up_sync(H3R_FULL_MASK, value, 1);
        const int up_index = __shfl_up_sync(H3R_FULL_MASK, index, 1);
        if (lane > position) {
            value = up_value;
            index = up_index;
        }
        if (lane == position) {
            value = new_value;
            index = new_index;
        }
        last_value = __shfl_sync(H3R_FULL_MASK, value, k - 1);
        last_index = __shfl_sync(H3R_FULL_MASK, index, k - 1);
    }
}

// Offer every lane's candidate (index < 0: none) to the warp's list, lowest lane first.
template <typename A>
__device__ __forceinline__ void list_offer(A& value, int& index, A& last_value, int& last_index, A candidate,
                                           int candidate_index, int k, int lane) {
    unsigned int pending =
        __ballot_sync(H3R_FULL_MASK, ranks_before(candidate, candidate_index, last_value, last_index));
    while (pending != 0u) {
        const int source = __ffs(pending) - 1;
        const A new_value = __shfl_sync(H3R_FULL_MASK, candidate, source);
        const int new_index = __shfl_sync(H3R_FULL_MASK, candidate_index, source);
        list_insert(value, index, last_value, last_index, new_value, new_index, k, lane);
        pending &= pending - 1u;
        pending &= __ballot_sync(H3R_FULL_MASK, ranks_before(candidate, candidate_index, last_value, last_index));
    }
}

template <typename A>
__device__ __forceinline__ void keep_best(A& value, int& index, A candidate, int candidate_index) {
    if (ranks_before(candidate, candidate_index, value, index)) {
        value = candidate;
        index = candidate_index;
    }
}

// The cell of selection slot s: its flat index (-1: off the map) and, when on the map, its value.
// topk: lane s holds it (value, index); argmax: the peak; local: the window cell, row-major.
__device__ __forceinline__ int slot_cell(int method, int s, int peak, int width, int height, int window,
                                         int list_index) {
    if (method == H3R_METHOD_TOPK) return list_index;
    if (method == H3R_METHOD_ARGMAX) return peak;
    const int half = window / 2;
    const int r = peak / width + s / window - half;
    const int c = peak % width + s % window - half;
    return (r >= 0 && r < height && c >= 0 && c < width) ? r * width + c : -1;
}

// What linear weighting divides the values by (h3r_kernels.reference.linear_scale): the peak
// where it is finite and > 0, else 1; the numerators then lie in [0, 1] and cannot overflow their sum.
template <typename A>
__device__ __forceinline__ A linear_scale(A peak_value) {
    return peak_value > A(0) && h3r::is_finite(peak_value) ? peak_value : A(1);
}

// The unnormalised weight of a selected value (h3r_kernels.reference._weights): softmax
// exp(v - peak), taken as 1 when v == peak (so infinite peaks are limits: the cells equal to
// the peak share the weight); linear max(v, 0) / linear_scale(peak), or [v == +inf] when the
// peak is +inf.
template <typename A>
__device__ __forceinline__ A weight_numerator(A v, A peak_value, int linear) {
    if (linear)
        return h3r::is_pos_inf(peak_value) ? (v == peak_value ? A(1) : A(0))
                                           : h3r::clamp_min_zero(v) / linear_scale(peak_value);
    return v == peak_value ? A(1) : h3r::exp_(v - peak_value);
}

// The weighted mean (x, y) of the selected cells' centres, as reference.decode, by one warp:
// lane `lane` weighs the slots s = lane, lane + 32, ... < slots whose cell (cell_of(s); -1:
// empty) is on the map, then the warp adds up. Returns the normaliser, the warp's sum of
// weight_numerator; with linear weights and a sum that is not > 0, all weight goes to slot
// peak_slot (the fallback). Shared by decode_kernel and decode_backward_kernel.
template <typename T, typename CellOf>
__device__ __forceinline__ typename h3r::Storage<T>::acc weighted_mean(
    const T* cells, int slots, int peak_slot, int width, typename h3r::Storage<T>::acc peak_value, int linear,
    int lane, CellOf&& cell_of, typename h3r::Storage<T>::acc& x, typename h3r::Storage<T>::acc& y) {
    using namespace h3r;
    typedef typename Storage<T>::acc A;
    A total = A(0);
    for (int s = lane; s < slots; s += 32) {
        const int cell = cell_of(s);
        if (cell >= 0) total += weight_numerator(Storage<T>::load(cells[cell]), peak_value, linear);
    }
    total = warp_sum(total);
    const bool fallback = linear && !(total > A(0));  // all weight to the peak slot
    x = A(0);
    y = A(0);
    for (int s = lane; s < slots; s += 32) {
        const int cell = cell_of(s);
        if (cell < 0) continue;
        const A w = fallback ? (s == peak_slot ? A(1) : A(0))
                             : weight_numerator(Storage<T>::load(cells[cell]), peak_value, linear) / total;
        x += w * static_cast<A>(cell % width);
        y += w * static_cast<A>(cell / width);
    }
    x = warp_sum(x);
    y = warp_sum(y);
    return total;
}

}  // namespace

template <typename T>
__global__ void __launch_bounds__(H3R_BLOCK) decode_kernel(
    const T* __restrict__ heatmaps,              // (num_maps, height, width)
    typename h3r::Storage<T>::acc* __restrict__ coords,  // (num_maps, 2) out, (x, y) in heatmap pixels
    typename h3r::Storage<T>::acc* __restrict__ scores,  // (num_maps,) out, each map's maximum
    long long* __restrict__ indices,             // (num_maps, slots) out, flat cells, -1: empty
    long long num_maps, int height, int width,
    int method, int k, int weighting, int window,  // H3R_METHOD_*, H3R_WEIGHTING_*
    int threads_per_map,                         // 32, 64, 128 or 256
    int vectorised) {                            // heatmaps 16-byte aligned and H*W*sizeof(T) % 16 == 0
    using namespace h3r;
    typedef typename Storage<T>::acc A;
    __shared__ A shared_values[H3R_BLOCK];
    __shared__ int shared_indices[H3R_BLOCK];

    const int maps_per_block = blockDim.x / threads_per_map;
    const int group = threadIdx.x / threads_per_map;
    const int rank = threadIdx.x - group * threads_per_map;
    const int lane = threadIdx.x & 31;
    const int warp_in_group = rank / 32;
    const int warps_per_group = threads_per_map / 32;
    const int map_size = height * width;
    const int vec = Pack<T>::size;
    const int list_size = method == H3R_METHOD_TOPK ? k : 1;
    const int slots = method == H3R_METHOD_TOPK ? k : (method == H3R_METHOD_LOCAL ? window * window : 1);
    const int peak_slot = method == H3R_METHOD_LOCAL ? slots / 2 : 0;
    const int linear = weighting == H3R_WEIGHTING_LINEAR;

    for (long long first_map = static_cast<long long>(blockIdx.x) * maps_per_block; first_map < num_maps;
         first_map += static_cast<long long>(gridDim.x) * maps_per_block) {
        const long long map = first_map + group;
        const bool active = map < num_maps;  // uniform over the group's warps
        const T* __restrict__ cells = heatmaps + map * map_size;
        A value = A(0);  // topk: lane i's list entry; otherwise this thread's best cell
        int index = -1;

        // 1. This warp's list, or this warp's best cell.
        if (active && list_size > 1) {
            A last_value = A(0);
            int last_index = -1;
            if (vectorised) {
                const int packs = map_size / vec;
                // The warp's packs, H3R_LOADS_IN_FLIGHT per lane loaded at once; the loop is warp-uniform.
                for (int base = warp_in_group * 32; base < packs; base += H3R_LOADS_IN_FLIGHT * threads_per_map) {
                    Pack<T> in[H3R_LOADS_IN_FLIGHT];
#pragma unroll
                    for (int u = 0; u < H3R_LOADS_IN_FLIGHT; ++u) {
                        const int i = base + u * threads_per_map + lane;
                        if (i < packs) in[u] = *reinterpret_cast<const Pack<T>*>(cells + i * vec);
                    }
#pragma unroll
                    for (int u = 0; u < H3R_LOADS_IN_FLIGHT; ++u) {
                        const int i = base + u * threads_per_map + lane;
#pragma unroll
                        for (int j = 0; j < vec; ++j) {
                            const A candidate = i < packs ? Storage<T>::load(in[u].v[j]) : A(0);
                            list_offer(value, index, last_value, last_index, candidate,
                                       i < packs ? i * vec + j : -1, k, lane);
                        }
                    }
                }
            } else {
                for (int base = warp_in_group * 32; base < map_size; base += threads_per_map) {
                    const int e = base + lane;
                    const A candidate = e < map_size ? Storage<T>::load(cells[e]) : A(0);
                    list_offer(value, index, last_value, last_index, candidate, e < map_size ? e : -1, k, lane);
                }
            }
        } else if (active) {
            if (vectorised) {
                for_each_pack(cells, map_size / vec, rank, threads_per_map, [&](int i, const Pack<T>& in) {
#pragma unroll
                    for (int j = 0; j < vec; ++j) keep_best(value, index, Storage<T>::load(in.v[j]), i * vec + j);
                });
            } else {
                for (int e = rank; e < map_size; e += threads_per_map)
                    keep_best(value, index, Storage<T>::load(cells[e]), e);
            }
            for (int offset = 16; offset > 0; offset >>= 1) {
                const A other_value = __shfl_xor_sync(H3R_FULL_MASK, value, offset);
                const int other_index = __shfl_xor_sync(H3R_FULL_MASK, index, offset);
                keep_best(value, index, other_value, other_index);
            }
        }

        // 2. The group's first warp merges the other warps' lists (or best cells).
        shared_values[threadIdx.x] = value;
        shared_indices[threadIdx.x] = lane < list_size ? index : -1;
        __syncthreads();
        if (active && warp_in_group == 0) {
            A last_value = __shfl_sync(H3R_FULL_MASK, value, list_size - 1);
            int last_index = __shfl_sync(H3R_FULL_MASK, index, list_size - 1);
            for (int w = 1; w < warps_per_group; ++w) {
                const A candidate = shared_values[threadIdx.x + 32 * w];
                const int candidate_index = shared_indices[threadIdx.x + 32 * w];
                if (list_size > 1)
                    list_offer(value, index, last_value, last_index, candidate, candidate_index, k, lane);
                else
                    keep_best(value, index, candidate, candidate_index);
            }

            // 3. Weights over the selected slots, coordinates, scores and indices.
            const A peak_value = __shfl_sync(H3R_FULL_MASK, value, 0);
            const int peak = __shfl_sync(H3R_FULL_MASK, index, 0);
            auto cell_of = [&](int s) { return slot_cell(method, s, peak, width, height, window, index); };
            for (int s = lane; s < slots; s += 32) indices[map * slots + s] = cell_of(s);
            A x, y;
            weighted_mean(cells, slots, peak_slot, width, peak_value, linear, lane, cell_of, x, y);
            if (lane == 0) {
                // A map holding a NaN (its peak is NaN): NaN coordinates, whatever the weights made of it.
                coords[2 * map] = peak_value != peak_value ? peak_value : x;
                coords[2 * map + 1] = peak_value != peak_value ? peak_value : y;
                scores[map] = peak_value;
            }
        }
        __syncthreads();  // the next maps overwrite the shared lists
    }
}

// decode_backward: the gradient of the coordinates and scores wrt the selected cells, one warp
// per map, written into `grad`, which the caller zero-fills (cells never selected get none).
template <typename T>
__global__ void __launch_bounds__(H3R_BLOCK) decode_backward_kernel(
    T* __restrict__ grad,                        // (num_maps, height, width), zero-filled
    const T* __restrict__ heatmaps,              // (num_maps, height, width)
    const long long* __restrict__ indices,       // (num_maps, slots) from decode, -1: empty
    const typename h3r::Storage<T>::acc* __restrict__ grad_coords,  // (num_maps, 2)
    const typename h3r::Storage<T>::acc* __restrict__ grad_scores,  // (num_maps,)
    long long num_maps, int height, int width, int slots, int method, int weighting) {
    using namespace h3r;
    typedef typename Storage<T>::acc A;
    const int lane = threadIdx.x & 31;
    const int warps_per_block = blockDim.x / 32;
    const int map_size = height * width;
    const int peak_slot = method == H3R_METHOD_LOCAL ? slots / 2 : 0;
    const int linear = weighting == H3R_WEIGHTING_LINEAR;

    for (long long map = static_cast<long long>(blockIdx.x) * warps_per_block + threadIdx.x / 32; map < num_maps;
         map += static_cast<long long>(gridDim.x) * warps_per_block) {
        const T* __restrict__ cells = heatmaps + map * map_size;
        const long long* __restrict__ selected = indices + map * slots;
        const A peak_value = Storage<T>::load(cells[selected[peak_slot]]);
        // Cells are flat indices < 2^31 (or -1): int holds them exactly.
        A x, y;
        const A total = weighted_mean(cells, slots, peak_slot, width, peak_value, linear, lane,
                                      [&](int s) { return static_cast<int>(selected[s]); }, x, y);
        const A gx = grad_coords[2 * map];
        const A gy = grad_coords[2 * map + 1];
        for (int s = lane; s < slots; s += 32) {
            const int cell = static_cast<int>(selected[s]);
            if (cell < 0) continue;
            const A v = Storage<T>::load(cells[cell]);
            const A direction = (static_cast<A>(cell % width) - x) * gx + (static_cast<A>(cell / width) - y) * gy;
            A g = A(0);
            // argmax, and maps whose maximum is not finite: piecewise constant coordinates, no gradient.
            if (method != H3R_METHOD_ARGMAX && is_finite(peak_value)) {
                if (!linear)
                    g = weight_numerator(v, peak_value, 0) / total * direction;
                else if (v > A(0) && total > A(0))
                    g = direction / linear_scale(peak_value) / total;
            }
            if (s == peak_slot) g += grad_scores[map];
            grad[map * map_size + cell] = Storage<T>::store(g);
        }
    }
}

#ifdef H3R_EXPLICIT_INSTANTIATION  // for `nvcc -ptx` (tests/test_csrc_compile.py); NVRTC uses name expressions
#define H3R_INSTANTIATE(T)                                                                                      \
    template __global__ void decode_kernel<T>(const T*, h3r::Storage<T>::acc*, h3r::Storage<T>::acc*, long long*, \
                                              long long, int, int, int, int, int, int, int, int);              \
    template __global__ void decode_backward_kernel<T>(T*, const T*, const long long*,                          \
                                                       const h3r::Storage<T>::acc*, const h3r::Storage<T>::acc*, \
                                                       long long, int, int, int, int, int);
H3R_INSTANTIATE(float)
H3R_INSTANTIATE(double)
H3R_INSTANTIATE(h3r::Half)
H3R_INSTANTIATE(h3r::BFloat16)
#undef H3R_INSTANTIATE
#endif
