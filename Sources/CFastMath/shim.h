// Math that LLVM can vectorise. Swift's Float.squareRoot() keeps a call to libm's
// sqrtf for negative inputs (to set errno), and that call stops a loop from
// vectorising; clang's elementwise builtin is the bare square root instruction.
#pragma once
static inline float ldm_sqrtf(float x) { return __builtin_elementwise_sqrt(x); }

// float32 → bfloat16 bit patterns, rounding to nearest even; a NaN stays a (quiet) NaN
// instead of rounding into infinity. Written in C because clang vectorises the
// narrowing store, which Swift's SIMD conversions leave to a generic call.
static inline void ldm_round_to_bf16(const float *src, unsigned short *dst, long n) {
    for (long i = 0; i < n; i++) {
        unsigned int b;
        __builtin_memcpy(&b, src + i, 4);
        unsigned int r = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
        dst[i] = (unsigned short)((b & 0x7FFFFFFFu) > 0x7F800000u ? (b >> 16) | 0x40u : r);
    }
}

// A hint that the cache line holding `p` will be read soon.
static inline void ldm_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }

// A hint that the cache line holding `p` will be written soon.
static inline void ldm_prefetch_write(const void *p) { __builtin_prefetch(p, 1, 3); }

// ldm_round_to_bf16 by the AVX512-BF16 instruction VCVTNEPS2BF16, sixteen values at a
// time: the same rounding (nearest, ties to even; NaN stays a quiet NaN), except that
// float32 subnormals become zero of the same sign. Only for CPUs that have the
// instruction: the caller checks.
#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx512f,avx512vl,avx512bf16")))
static void ldm_round_to_bf16_avx512(const float *src, unsigned short *dst, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)b);
    }
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(k, src + i));
        _mm256_mask_storeu_epi16((__m256i *)(dst + i), k, (__m256i)b);
    }
}
#endif
