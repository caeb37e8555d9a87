/* aiva_common.h — what the C core (aiva_core.c) and Adam (aiva_adam.c) both compute on
 * float32 bits: bfloat16 rounding and the max |x| reduction.  Internal to the C sources:
 * static inline, nothing exported, no state. */
#ifndef AIVA_COMMON_H
#define AIVA_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The bits of +Inf: |x| as bits at or above this means x is NaN or Inf. */
#define AIVA_INF_BITS 0x7f800000u

/* |f| as the bits of a non-negative float: they order like the value, and NaN/Inf sort
 * above every finite value. */
static inline uint32_t aiva_abs_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x7fffffffu;
}

static inline float aiva_bits_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* max |a[i]| as bits (0 when n is 0): at or above AIVA_INF_BITS exactly when some a[i] is
 * NaN or Inf.  Compared as integers: an integer max reduction vectorises where a float one
 * (with its NaN and signed-zero rules) does not.  Signed, because the masked bits are
 * non-negative and SSE2 has a signed 32-bit compare but no unsigned one. */
static inline uint32_t aiva_max_abs_bits(const float *a, ptrdiff_t n)
{
    int32_t worst = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        const int32_t bits = (int32_t)aiva_abs_bits(a[i]);
        worst = bits > worst ? bits : worst;
    }
    return (uint32_t)worst;
}

/* A finite float rounded to bfloat16 (its upper 16 bits), to nearest even. */
static inline uint16_t aiva_bf16_round_finite(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Any float rounded to bfloat16: as aiva_bf16_round_finite, except that a NaN is kept a
 * (quiet) NaN, which the carry could otherwise turn into Inf. */
static inline uint16_t aiva_bf16_round(float f)
{
    const uint32_t u = aiva_abs_bits(f);
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return u > AIVA_INF_BITS ? (uint16_t)((bits >> 16) | 0x40u) : aiva_bf16_round_finite(f);
}

#endif
