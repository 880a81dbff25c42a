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
