// Shared device helpers of the h3r CUDA C kernels (encode.cu, loss.cu, decode.cu).
//
// Compiled at run time by NVRTC through CuPy (h3r_kernels/cuda/_module.py) and ahead of time
// by `nvcc -ptx` in tests/test_csrc_compile.py. Self-contained on purpose: no CUDA or C++
// standard headers, so NVRTC needs no include path besides this folder.
//
// Conventions (as in h3r_kernels/reference.py, the executable spec):
//   * keypoints are (B, K, 2) float32 (x, y) in heatmap pixels; x is the column, y the row;
//     the cell at row r, column c has its centre at (x = c, y = r);
//   * maps are (B, K, H, W) contiguous, stored as float, double, h3r::Half or h3r::BFloat16;
//     reduced-precision maps are computed in float32, float64 maps in float64;
//   * "map" indexes the flattened (B, K) pair: map = b * K + k.
#pragma once

// The option codes and shared constants are not written here: they come from the spec,
// h3r_kernels/spec.py, as -D defines (h3r_kernels.spec.c_defines(); the CuPy loader and the
// nvcc compile test pass the same ones):
//   H3R_ROUNDING_{RANDOM,NEAREST,FLOOR,NONE}, H3R_LOSS_{BCE,MSE}, H3R_REDUCTION_{MEAN,SUM,NONE},
//   H3R_METHOD_{TOPK,LOCAL,ARGMAX}, H3R_WEIGHTING_{SOFTMAX,LINEAR};
//   H3R_BLOCK (threads per block of every kernel), H3R_MAX_MAPS_PER_BLOCK (the most maps one
//   encode block renders at once), H3R_REDUCE_CHUNK (values one loss_reduce_kernel block adds),
//   H3R_LOADS_IN_FLIGHT (16-byte packs each thread loads before using any).
#if !defined(H3R_BLOCK) || !defined(H3R_MAX_MAPS_PER_BLOCK) || !defined(H3R_REDUCE_CHUNK) || \
    !defined(H3R_LOADS_IN_FLIGHT) || !defined(H3R_ROUNDING_RANDOM) || !defined(H3R_ROUNDING_NEAREST) || \
    !defined(H3R_ROUNDING_FLOOR) || !defined(H3R_ROUNDING_NONE)
#error "compile with the -D defines of h3r_kernels.spec.c_defines() (h3r_kernels/cuda/_module.py passes them)"
#endif

#define H3R_FULL_MASK 0xffffffffu

namespace h3r {

// --------------------------------------------------------------------------- storage types

// IEEE half and bfloat16 as raw bits; converted with round-to-nearest-even like torch's .to().
struct Half {
    unsigned short bits;
};
struct BFloat16 {
    unsigned short bits;
};

// Storage<T>: the accumulation type of a map dtype and the conversions to and from it.
template <typename T>
struct Storage;

template <>
struct Storage<float> {
    typedef float acc;
    static __device__ __forceinline__ float load(float v) { return v; }
    static __device__ __forceinline__ float store(float v) { return v; }
};

template <>
struct Storage<double> {
    typedef double acc;
    static __device__ __forceinline__ double load(double v) { return v; }
    static __device__ __forceinline__ double store(double v) { return v; }
};

template <>
struct Storage<Half> {
    typedef float acc;
    static __device__ __forceinline__ float load(Half v) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
        return f;
    }
    static __device__ __forceinline__ Half store(float v) {
        Half h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));
        return h;
    }
};

template <>
struct Storage<BFloat16> {
    typedef float acc;
    static __device__ __forceinline__ float load(BFloat16 v) {
        return __int_as_float(static_cast<int>(static_cast<unsigned int>(v.bits) << 16));
    }
    static __device__ __forceinline__ BFloat16 store(float v) {
        unsigned int u = static_cast<unsigned int>(__float_as_int(v));
        BFloat16 b;
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            b.bits = static_cast<unsigned short>((u >> 16) | 0x0040u);  // quiet NaN, sign kept
        } else {
            u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
            b.bits = static_cast<unsigned short>(u >> 16);
        }
        return b;
    }
};

// 16 bytes of T: one vectorised global load or store (the pointer must be 16-byte aligned).
template <typename T>
struct alignas(16) Pack {
    static const int size = 16 / sizeof(T);
    T v[16 / sizeof(T)];
};

// for_each_pack: visit(i, pack) for the 16-byte packs i = first, first + stride, ... < packs of
// `data` (which must be 16-byte aligned), in that order. Each thread loads H3R_LOADS_IN_FLIGHT
// packs before it uses any, so that several reads are in flight per thread. `data` is not
// __restrict__: visit may write to it (loss_backward_kernel scales in place).
template <typename T, typename Visit>
__device__ __forceinline__ void for_each_pack(const T* data, int packs, int first, int stride, Visit&& visit) {
    for (int base = first; base < packs; base += H3R_LOADS_IN_FLIGHT * stride) {
        Pack<T> in[H3R_LOADS_IN_FLIGHT];
#pragma unroll
        for (int u = 0; u < H3R_LOADS_IN_FLIGHT; ++u) {
            const int i = base + u * stride;
            if (i < packs) in[u] = *reinterpret_cast<const Pack<T>*>(data + i * Pack<T>::size);
        }
#pragma unroll
        for (int u = 0; u < H3R_LOADS_IN_FLIGHT; ++u) {
            const int i = base + u * stride;
            if (i >= packs) break;
            visit(i, in[u]);
        }
    }
}

// --------------------------------------------------------------------------- math

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }
__device__ __forceinline__ float abs_(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_(double x) { return fabs(x); }

// Whether x is +inf, and whether x is finite (false for NaN and +-inf); no math headers needed.
__device__ __forceinline__ bool is_pos_inf(float x) { return x == __int_as_float(0x7f800000); }
__device__ __forceinline__ bool is_pos_inf(double x) { return x == __longlong_as_double(0x7ff0000000000000LL); }
__device__ __forceinline__ bool is_finite(float x) { return fabsf(x) <= 3.40282346638528859812e38f; }
__device__ __forceinline__ bool is_finite(double x) { return fabs(x) <= 1.79769313486231570815e308; }

// max(x, 0) that keeps NaN, as torch.clamp(x, min=0) does (fmaxf would return 0).
template <typename A>
__device__ __forceinline__ A clamp_min_zero(A x) {
    return x < A(0) ? A(0) : x;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(H3R_FULL_MASK, x, offset);
    return x;
}

// --------------------------------------------------------------------------- random rounding

// lowbias32 (C. Wellons), bit for bit as h3r_kernels/rng.py.
__device__ __forceinline__ unsigned int mix32(unsigned int x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// The draw u in [0, 1) of keypoint (b, k), axis 0 (x) or 1 (y): (h >> 8) * 2^-24, exact in float32.
__device__ __forceinline__ float uniform(unsigned int seed, unsigned int b, unsigned int k, unsigned int axis) {
    const unsigned int h = mix32(mix32(mix32(seed ^ 0x9e3779b9u) ^ b) ^ (2u * k + axis));
    return static_cast<float>(h >> 8) * 5.9604644775390625e-08f;
}

// --------------------------------------------------------------------------- targets

// The 1-D target profile of one keypoint along one axis: at most two components (a cell,
// or the continuous centre for rounding "none", and a weight). A weight of 0 means the
// component is absent; both weights 0 give an all-zero profile.
struct AxisTarget {
    float centre0, weight0;
    float centre1, weight1;
};

// Both axes of one keypoint's separable target: target[r][c] = row(r) * col(c).
struct MapTarget {
    AxisTarget col;  // x axis, positions 0 .. W-1
    AxisTarget row;  // y axis, positions 0 .. H-1
};

__device__ __forceinline__ bool cell_on_axis(float cell, int size) {
    return cell >= 0.0f && cell <= static_cast<float>(size - 1);  // false for NaN
}

// One axis of the target of coordinate x (float32) on an axis of `size` cells.
// Returns whether this axis's target lies on the map (reference.target_profiles).
__device__ __forceinline__ bool axis_target(AxisTarget& t, float x, int size, int rounding, bool expected,
                                            unsigned int seed, unsigned int b, unsigned int k, unsigned int axis) {
    if (expected && rounding == H3R_ROUNDING_RANDOM) {
        // Expectation of randomized rounding: cells floor(x) and floor(x) + 1, weights 1 - frac
        // and frac; off-map components are dropped (a non-finite x drops both).
        const float lower = floorf(x);
        const float frac = x - lower;
        const float upper = lower + 1.0f;
        t.centre0 = lower;
        t.weight0 = cell_on_axis(lower, size) ? 1.0f - frac : 0.0f;
        t.centre1 = upper;
        t.weight1 = cell_on_axis(upper, size) ? frac : 0.0f;
        return t.weight0 > 0.0f || t.weight1 > 0.0f;
    }
    float cell;
    if (rounding == H3R_ROUNDING_RANDOM) {
        const float lower = floorf(x);
        cell = lower + (uniform(seed, b, k, axis) < x - lower ? 1.0f : 0.0f);
    } else if (rounding == H3R_ROUNDING_FLOOR) {
        cell = floorf(x);
    } else {  // nearest, and none (whose nearest cell decides whether it is on the map)
        cell = floorf(x + 0.5f);
    }
    t.centre0 = rounding == H3R_ROUNDING_NONE ? x : cell;
    t.weight0 = 1.0f;
    t.centre1 = 0.0f;
    t.weight1 = 0.0f;
    return cell_on_axis(cell, size);
}

// The target of keypoint `map` (= b * K + k); all-zero when the keypoint is invisible or its
// target is off the map (reference: `contributes` False). Sets *contributes when not null.
__device__ __forceinline__ MapTarget map_target(const float* __restrict__ keypoints,
                                                const unsigned char* __restrict__ visible, long long map,
                                                int num_keypoints, int height, int width, int rounding,
                                                bool expected, unsigned int seed, bool* contributes) {
    const unsigned int b = static_cast<unsigned int>(map / num_keypoints);
    const unsigned int k = static_cast<unsigned int>(map % num_keypoints);
    MapTarget t;
    const bool on_x = axis_target(t.col, keypoints[2 * map], width, rounding, expected, seed, b, k, 0u);
    const bool on_y = axis_target(t.row, keypoints[2 * map + 1], height, rounding, expected, seed, b, k, 1u);
    const bool counts = on_x && on_y && (visible == nullptr || visible[map] != 0);
    if (!counts) {
        t.col.weight0 = t.col.weight1 = 0.0f;
        t.row.weight0 = t.row.weight1 = 0.0f;
    }
    if (contributes != nullptr) *contributes = counts;
    return t;
}

// The unit-peak kernel at signed distance d (cells): Kronecker delta (sigma = 0) or
// exp(d * d * gauss_scale) with gauss_scale = float32(-0.5 / sigma^2). Every product and
// sum below is rounded separately (no fused multiply-add), as the reference's tensor ops.
__device__ __forceinline__ float unit_kernel(float d, bool gaussian, float gauss_scale) {
    if (!gaussian) return d == 0.0f ? 1.0f : 0.0f;
    return expf(__fmul_rn(__fmul_rn(d, d), gauss_scale));
}

// The profile value at integer position p.
__device__ __forceinline__ float profile_value(const AxisTarget& t, int p, bool gaussian, float gauss_scale) {
    const float position = static_cast<float>(p);
    float value = 0.0f;
    if (t.weight0 != 0.0f) value = __fmul_rn(t.weight0, unit_kernel(__fsub_rn(position, t.centre0), gaussian, gauss_scale));
    if (t.weight1 != 0.0f)
        value = __fadd_rn(value, __fmul_rn(t.weight1, unit_kernel(__fsub_rn(position, t.centre1), gaussian, gauss_scale)));
    return value;
}

// Fill profiles[0 .. height) with the row profile and profiles[height .. height + width) with
// the column profile of `target`, cooperatively by `count` threads numbered `rank`.
__device__ __forceinline__ void fill_profiles(float* profiles, const MapTarget& target, int height, int width,
                                              bool gaussian, float gauss_scale, int rank, int count) {
    for (int p = rank; p < height + width; p += count) {
        profiles[p] = p < height ? profile_value(target.row, p, gaussian, gauss_scale)
                                 : profile_value(target.col, p - height, gaussian, gauss_scale);
    }
}

// --------------------------------------------------------------------------- ranking

// Whether (a, index_a) ranks before (b, index_b) in the decoders' order: larger value first,
// NaN above every number (torch.sort / argmax), ties to the lower flat index; a negative
// index marks an empty slot, which ranks after everything.
template <typename A>
__device__ __forceinline__ bool ranks_before(A a, int index_a, A b, int index_b) {
    if (index_b < 0) return index_a >= 0;
    if (index_a < 0) return false;
    const bool a_nan = a != a;
    const bool b_nan = b != b;
    if (a_nan || b_nan) return a_nan && (!b_nan || index_a < index_b);
    return a > b || (a == b && index_a < index_b);
}

}  // namespace h3r
