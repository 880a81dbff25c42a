// Math that LLVM can vectorise. Swift's Float.squareRoot() keeps a call to libm's
// sqrtf for negative inputs (to set errno), and that call stops a loop from
// vectorising; clang's elementwise builtin is the bare square root instruction.
#pragma once
static inline float ldm_sqrtf(float x) { return __builtin_elementwise_sqrt(x); }
