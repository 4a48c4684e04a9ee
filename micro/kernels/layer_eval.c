/* tflq's layer kernels (see tflq_kernels.h): int8 rows, bit-plane subset sums and
 * codebook product tables, for FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D.
 *
 * FC and CONV_2D share one engine over an input vector of `depth` values (CONV_2D
 * gathers each output pixel's patch first, padding taps set to the input zero point).
 * The vector is processed in blocks of inputs; per block a table is built once and
 * read by every output channel. Only byte loads touch the weights, so rows need no
 * alignment (the FE310 traps on misaligned word loads; QEMU does not). */
#include <string.h>

#include "tflq_kernels.h"
#include "tflq_requantize.h"

#define INLINE static inline __attribute__((always_inline))
/* gcc's first scheduling pass hoists all of a loop's loads and then spills the
 * accumulators of the 4-channel int8 loop to the stack; without it the loop stays in
 * registers. FC 128 -> 128 on the FE310, in tflq_layer_eval: 5.36 instructions per MAC
 * with that pass, 3.87 without (the 2-channel loop before it: 4.43). The second pass
 * reorders the loads of a 4-channel group, which the source reads in address order so
 * that the FE310's flash serves them as one sequential stream: on that FC, with the
 * QEMU flash plugin (benchmarks/_firmware.py), 7.58M estimated silicon cycles with it
 * and 1.35M without, at the same instruction count. */
#if defined(__GNUC__) && !defined(__clang__)
#define NO_PRESCHEDULE __attribute__((optimize("no-schedule-insns", "no-schedule-insns2")))
#else
#define NO_PRESCHEDULE
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define INLINE_COPIES __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define INLINE_COPIES
#endif

/* Inputs per block: 512 bytes of tables whatever the format. */
enum { PLANES_BLOCK = 64, LUT_TABLE_BYTES = 512 };

int32_t tflq_requantize(int32_t acc, int32_t multiplier, int32_t shift) {
  return tflq_multiply_by_quantized_multiplier(acc, multiplier, shift);
}

/* A requantized accumulator as the int8 output of a layer with this output offset and
 * activation range. */
typedef struct {
  int32_t offset, min, max;
} out_range_t;
INLINE out_range_t out_range(const tflq_layer_t* l) {
  const out_range_t r = {l->output_offset, l->act_min, l->act_max};
  return r;
}
INLINE int8_t clamp_to(out_range_t r, int32_t requantized) {
  int32_t v = requantized + r.offset;
  if (v < r.min) v = r.min;
  if (v > r.max) v = r.max;
  return (int8_t)v;
}
INLINE int8_t clamp_output(const tflq_layer_t* l, int32_t requantized) {
  return clamp_to(out_range(l), requantized);
}

INLINE int8_t finish(const tflq_layer_t* l, int c, int32_t acc) {
  const int q = l->requant_per_channel ? c : 0;
  return clamp_output(l, tflq_multiply_by_quantized_multiplier(acc + l->bias[c],
                                                               l->multiplier[q], l->shift[q]));
}

/* *p, loaded before any later load: gcc's combine and register allocation otherwise
 * reorder a run of loads, which breaks the FE310 flash's sequential stream. */
INLINE int32_t load_in_order(const int32_t* p) {
  int32_t v = *p;
  __asm__ volatile("" : "+r"(v) : : "memory");
  return v;
}

/* *p, loaded before any later load, as load_in_order does for words: rv32 gcc -O2
 * reorders the three byte loads of a 3-bit codebook chunk, which the FE310's flash then
 * serves as isolated loads (log3 FC 128 -> 128 in flash: 2,648,180 estimated cycles
 * with the reordering, 1,084,620 in order). */
INLINE uint32_t byte_in_order(const uint8_t* p) {
  uint32_t v = *p;
  __asm__ volatile("" : "+r"(v) : : "memory");
  return v;
}

/* Four consecutive words (or one, repeated, when step is 0) in address order. */
INLINE void load4(const int32_t* p, int step, int32_t* v0, int32_t* v1, int32_t* v2,
                  int32_t* v3) {
  *v0 = load_in_order(p);
  if (step) {
    *v1 = load_in_order(p + 1);
    *v2 = load_in_order(p + 2);
    *v3 = load_in_order(p + 3);
  } else {
    *v1 = *v2 = *v3 = *v0;
  }
}

/* finish() for channels c .. c + 3, their constants read array by array in address
 * order: three sequential runs of flash reads on the FE310 instead of up to twelve
 * isolated loads. */
INLINE void finish4(const tflq_layer_t* l, out_range_t r, int c, int32_t s0, int32_t s1,
                    int32_t s2, int32_t s3, int8_t* out) {
  int32_t b0, b1, b2, b3, m0, m1, m2, m3, e0, e1, e2, e3;
  const int step = l->requant_per_channel ? 1 : 0;
  load4(l->bias + c, 1, &b0, &b1, &b2, &b3);
  load4(l->multiplier + step * c, step, &m0, &m1, &m2, &m3);
  load4(l->shift + step * c, step, &e0, &e1, &e2, &e3);
  out[c] = clamp_to(r, tflq_multiply_by_quantized_multiplier(s0 + b0, m0, e0));
  out[c + 1] = clamp_to(r, tflq_multiply_by_quantized_multiplier(s1 + b1, m1, e1));
  out[c + 2] = clamp_to(r, tflq_multiply_by_quantized_multiplier(s2 + b2, m2, e2));
  out[c + 3] = clamp_to(r, tflq_multiply_by_quantized_multiplier(s3 + b3, m3, e3));
}

static int block_inputs(const tflq_layer_t* l) {
  const int padded = (l->depth + 7) & ~7;
  int block = padded;
  if (l->format == TFLQ_FMT_PLANES) block = PLANES_BLOCK;
  if (l->format == TFLQ_FMT_LUT) block = LUT_TABLE_BYTES / (2 << l->bits);
  return block < padded ? block : padded;
}

static int uses_shared_tables(const tflq_layer_t* l) {
  return l->op != TFLQ_OP_DEPTHWISE &&
         (l->format == TFLQ_FMT_PLANES ||
          (l->format == TFLQ_FMT_LUT && !l->per_channel_codebook));
}

/* Output channels go through a row buffer when they are packed or pooled (not for
 * DEPTHWISE_CONV_2D, which emits one value at a time). */
static int uses_row_buffer(const tflq_layer_t* l) {
  return l->op != TFLQ_OP_DEPTHWISE && (l->out_packed || l->pool_kh);
}

/* Output positions a CONV_2D computes per pass: 2 for int8 rows in 8-channel groups
 * (int8_vector2), else 1. */
static int positions_per_pass(const tflq_layer_t* l) {
  return l->op == TFLQ_OP_CONV && l->int8_groups && l->out_channels >= 8 ? 2 : 1;
}

/* Scratch, in order: the output row buffers, FC's unpacked input, CONV_2D's patches
 * (one per position of a pass), then the kernel's tables (each part a multiple of 4
 * bytes). */
static size_t staging_bytes(const tflq_layer_t* l) {
  const size_t pass = (size_t)positions_per_pass(l);
  size_t bytes = uses_row_buffer(l) ? pass * (size_t)((l->out_channels + 3) & ~3) : 0;
  if (l->op == TFLQ_OP_CONV || (l->op == TFLQ_OP_FC && l->in_packed))
    bytes += pass * (size_t)((l->depth + 7) & ~7); /* patches, or the unpacked input */
  return bytes;
}

/* The parts of a staged block of n channels (conv() fills them in this order): rows,
 * then the int32 bias, multiplier and shift, thresholds, then the int16 affine pairs
 * and the int8 levels (a shared one: once), each part a multiple of 4 bytes. */
static size_t round4(size_t bytes) { return (bytes + 3) & ~(size_t)3; }
static size_t stage_words(const tflq_layer_t* l, size_t n) {
  return n * (l->requant_per_channel ? 3 : 1) +
         (l->thresholds ? n * (size_t)(l->out_levels - 1) : 0);
}
static size_t stage_codebooks(const tflq_layer_t* l, size_t n) {
  return l->per_channel_codebook ? n : 1;
}

size_t tflq_stage_bytes(const tflq_layer_t* l, int channels) {
  const size_t n = (size_t)channels;
  return round4(n * (size_t)l->row_bytes) + 4 * stage_words(l, n) +
         (l->affine ? 4 * stage_codebooks(l, n) : 0) +
         (l->levels ? round4(stage_codebooks(l, n) << l->bits) : 0);
}

/* The kernel's scratch without the stage_channels block (which follows it). */
static size_t kernel_scratch_bytes(const tflq_layer_t* l) {
  size_t bytes = staging_bytes(l);
  if (l->format == TFLQ_FMT_BITSERIAL) /* the input's bit-planes */
    return bytes + 4 * (size_t)l->in_bits * (size_t)((l->depth + 31) >> 5);
  if (uses_shared_tables(l)) {
    const int block = block_inputs(l);
    bytes += l->format == TFLQ_FMT_PLANES ? (size_t)block / 4 * 16 * 2
                                          : (size_t)block * (2u << l->bits);
    if (block < l->depth) bytes += 4 * (size_t)l->out_channels; /* accumulators */
  }
  return bytes;
}

size_t tflq_scratch_bytes(const tflq_layer_t* l) {
  return kernel_scratch_bytes(l) + (l->stage_channels ? tflq_stage_bytes(l, l->stage_channels) : 0);
}

/* ---- packed activations: codes of s bits, LSB first (tflq_kernels.h) ---- */

INLINE int store_bits(int packed) { return packed == 3 ? 4 : packed; }

/* The value of code 0 of a packed tensor of k-bit codes (128 - 2^k). */
INLINE int packed_low(int packed) { return 128 - (1 << packed); }

INLINE uint32_t get_code(const uint8_t* t, size_t e, int s) {
  const size_t bit = e * (size_t)s;
  return ((uint32_t)t[bit >> 3] >> (bit & 7)) & ((1u << s) - 1);
}

/* Whole bytes of s-bit codes (8 / s per byte), s a constant in each caller. */
INLINE int unpack_bytes(const uint8_t* p, int count, const int s, int low, int8_t* dst) {
  const int per = 8 / s;
  int i = 0;
  for (; i + per <= count; i += per, ++p) {
    uint32_t b = *p;
    for (int j = 0; j < per; ++j, b >>= s) dst[i + j] = (int8_t)(low + (int)(b & ((1u << s) - 1)));
  }
  return i;
}

/* Values e .. e + count - 1 of a packed tensor whose codes start at `low`: a byte at a
 * time from a byte boundary, the rest one code at a time. */
static void unpack_values(const uint8_t* t, size_t e, int count, int s, int low, int8_t* dst) {
  int i = 0;
  const size_t bit = e * (size_t)s;
  if ((bit & 7) == 0) {
    const uint8_t* p = t + (bit >> 3);
    if (s == 1) i = unpack_bytes(p, count, 1, low, dst);
    else if (s == 2) i = unpack_bytes(p, count, 2, low, dst);
    else i = unpack_bytes(p, count, 4, low, dst);
  }
  for (; i < count; ++i) dst[i] = (int8_t)(low + (int)get_code(t, e + i, s));
}

/* A patch's bytes: words where destination, source and count allow (a CONV_2D's
 * patch and TFLM's tensors are 4-byte aligned, so runs of cin % 4 == 0 channels are),
 * else bytes; inline, as picolibc's memcpy and memset take about 100 instructions for
 * 16 bytes. */
typedef uint32_t __attribute__((may_alias)) word_t;
INLINE void copy_bytes(void* to, const void* from, size_t n) {
  uint8_t* dst = (uint8_t*)to;
  const uint8_t* src = (const uint8_t*)from;
  if ((((uintptr_t)dst | (uintptr_t)src | n) & 3) == 0) {
    for (size_t i = 0; i < n; i += 4) *(word_t*)(dst + i) = *(const word_t*)(src + i);
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = src[i];
  }
}
INLINE void fill_bytes(int8_t* dst, int8_t value, int n) {
  if ((((uintptr_t)dst | (uintptr_t)n) & 3) == 0) {
    const uint32_t word = 0x01010101u * (uint8_t)value;
    for (int i = 0; i < n; i += 4) *(word_t*)(dst + i) = word;
  } else {
    for (int i = 0; i < n; ++i) dst[i] = value;
  }
}

/* The pool outputs [*first, *last] along one axis whose window holds input i. */
INLINE void pool_span(int i, int kernel, int stride, int pad, int outs, int* first, int* last) {
  const int lo = i + pad - kernel + 1;
  *first = lo <= 0 ? 0 : (lo + stride - 1) / stride;
  const int hi = (i + pad) / stride;
  *last = hi < outs - 1 ? hi : outs - 1;
}

/* Stores values v[0 .. count) of channels c0 .. of output position (oy, ox): int8 or
 * packed, directly or into the fused max-pool's outputs (which start at their least
 * code: tflq_layer_eval clears them). */
static void emit(const tflq_layer_t* l, int oy, int ox, const int8_t* v, int c0, int count,
                 uint8_t* out) {
  const int channels = l->out_channels, s = store_bits(l->out_packed);
  const int low = (int)l->act_min;
  if (l->pool_kh == 0) {
    const size_t e = ((size_t)oy * l->out_w + ox) * channels + c0;
    if (s == 0) {
      copy_bytes(out + e, v, (size_t)count);
    } else {
      for (int i = 0; i < count; ++i) {
        const size_t bit = (e + i) * (size_t)s;
        out[bit >> 3] |= (uint8_t)((uint32_t)(v[i] - low) << (bit & 7));
      }
    }
    return;
  }
  int py0, py1, px0, px1;
  pool_span(oy, l->pool_kh, l->pool_stride_h, l->pool_pad_top, l->pool_out_h, &py0, &py1);
  pool_span(ox, l->pool_kw, l->pool_stride_w, l->pool_pad_left, l->pool_out_w, &px0, &px1);
  for (int py = py0; py <= py1; ++py) {
    for (int px = px0; px <= px1; ++px) {
      const size_t e = ((size_t)py * l->pool_out_w + px) * channels + c0;
      if (s == 0) {
        int8_t* o = (int8_t*)out + e;
        for (int i = 0; i < count; ++i)
          if (v[i] > o[i]) o[i] = v[i];
      } else {
        for (int i = 0; i < count; ++i) {
          const size_t bit = (e + i) * (size_t)s;
          const uint32_t code = (uint32_t)(v[i] - low), shift = bit & 7;
          uint8_t* byte = out + (bit >> 3);
          if (code > (((uint32_t)*byte >> shift) & ((1u << s) - 1)))
            *byte = (uint8_t)((*byte & ~(((1u << s) - 1) << shift)) | (code << shift));
        }
      }
    }
  }
}

/* ---- int8 rows: eight or four (then two, one) output channels per pass share the input loads ---- */

INLINE int32_t dot1(const int8_t* x, const int8_t* w, int depth) {
  int32_t s = 0;
  int k = 0;
  for (; k + 4 <= depth; k += 4)
    s += x[k] * w[k] + x[k + 1] * w[k + 1] + x[k + 2] * w[k + 2] + x[k + 3] * w[k + 3];
  for (; k < depth; ++k) s += x[k] * w[k];
  return s;
}

/* a0 .. a7 += x * w[0 .. 7]: one input's MACs into an 8-channel group's accumulators,
 * the weights read in address order (the accumulators are named, not an array: gcc
 * reassociates array sums by channel and breaks that order). */
#define TFLQ_MAC8(a0, a1, a2, a3, a4, a5, a6, a7, x, w)                  \
  do {                                                                   \
    const int32_t tflq_x_ = (x);                                         \
    const int8_t* const tflq_w_ = (w);                                   \
    (a0) += tflq_x_ * tflq_w_[0];                                        \
    (a1) += tflq_x_ * tflq_w_[1];                                        \
    (a2) += tflq_x_ * tflq_w_[2];                                        \
    (a3) += tflq_x_ * tflq_w_[3];                                        \
    (a4) += tflq_x_ * tflq_w_[4];                                        \
    (a5) += tflq_x_ * tflq_w_[5];                                        \
    (a6) += tflq_x_ * tflq_w_[6];                                        \
    (a7) += tflq_x_ * tflq_w_[7];                                        \
  } while (0)

/* Output channels c .. of int8_vector, whose weights start at w: a blob's last group of
 * 4, then rows (four, two, one channels per pass). */
NO_PRESCHEDULE static void int8_rest(const tflq_layer_t* l, const int8_t* x, int8_t* out, int c,
                                     const int8_t* w) {
  const int depth = l->depth;
  const out_range_t range = out_range(l);
  if (l->int8_groups) {
    if (c + 4 <= l->out_channels) {
      int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      const int8_t* xp = x;
      const int8_t* end = x + (depth & ~3);
      for (; xp != end; xp += 4, w += 16) {
        const int32_t x0 = xp[0];
        s0 += x0 * w[0];
        s1 += x0 * w[1];
        s2 += x0 * w[2];
        s3 += x0 * w[3];
        const int32_t x1 = xp[1];
        s0 += x1 * w[4];
        s1 += x1 * w[5];
        s2 += x1 * w[6];
        s3 += x1 * w[7];
        const int32_t x2 = xp[2];
        s0 += x2 * w[8];
        s1 += x2 * w[9];
        s2 += x2 * w[10];
        s3 += x2 * w[11];
        const int32_t x3 = xp[3];
        s0 += x3 * w[12];
        s1 += x3 * w[13];
        s2 += x3 * w[14];
        s3 += x3 * w[15];
      }
      for (const int8_t* last = x + depth; xp != last; ++xp, w += 4) {
        const int32_t v = *xp;
        s0 += v * w[0];
        s1 += v * w[1];
        s2 += v * w[2];
        s3 += v * w[3];
      }
      finish4(l, range, c, s0, s1, s2, s3, out);
      c += 4;
    }
  }
  /* Rows, four output channels per pass: each input load serves four MACs. */
  for (; c + 4 <= l->out_channels; c += 4, w += 4 * depth) {
    const int8_t *w0 = w, *w1 = w + depth, *w2 = w + 2 * depth, *w3 = w + 3 * depth;
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    const int8_t* xp = x;
    const int8_t* end = x + (depth & ~7);
    for (; xp != end; xp += 8, w0 += 8, w1 += 8, w2 += 8, w3 += 8) {
      const int32_t x0 = xp[0], x1 = xp[1], x2 = xp[2], x3 = xp[3];
      const int32_t x4 = xp[4], x5 = xp[5], x6 = xp[6], x7 = xp[7];
      s0 += x0 * w0[0] + x1 * w0[1] + x2 * w0[2] + x3 * w0[3] +
            x4 * w0[4] + x5 * w0[5] + x6 * w0[6] + x7 * w0[7];
      s1 += x0 * w1[0] + x1 * w1[1] + x2 * w1[2] + x3 * w1[3] +
            x4 * w1[4] + x5 * w1[5] + x6 * w1[6] + x7 * w1[7];
      s2 += x0 * w2[0] + x1 * w2[1] + x2 * w2[2] + x3 * w2[3] +
            x4 * w2[4] + x5 * w2[5] + x6 * w2[6] + x7 * w2[7];
      s3 += x0 * w3[0] + x1 * w3[1] + x2 * w3[2] + x3 * w3[3] +
            x4 * w3[4] + x5 * w3[5] + x6 * w3[6] + x7 * w3[7];
    }
    for (const int8_t* last = x + depth; xp != last; ++xp) {
      const int32_t v = *xp;
      s0 += v * *w0++;
      s1 += v * *w1++;
      s2 += v * *w2++;
      s3 += v * *w3++;
    }
    out[c] = finish(l, c, s0);
    out[c + 1] = finish(l, c + 1, s1);
    out[c + 2] = finish(l, c + 2, s2);
    out[c + 3] = finish(l, c + 3, s3);
  }
  for (; c + 2 <= l->out_channels; c += 2, w += 2 * depth) {
    const int8_t* w1 = w + depth;
    int32_t s0 = 0, s1 = 0;
    int k = 0;
    for (; k + 4 <= depth; k += 4) {
      const int32_t x0 = x[k], x1 = x[k + 1], x2 = x[k + 2], x3 = x[k + 3];
      s0 += x0 * w[k] + x1 * w[k + 1] + x2 * w[k + 2] + x3 * w[k + 3];
      s1 += x0 * w1[k] + x1 * w1[k + 1] + x2 * w1[k + 2] + x3 * w1[k + 3];
    }
    for (; k < depth; ++k) {
      s0 += x[k] * w[k];
      s1 += x[k] * w1[k];
    }
    out[c] = finish(l, c, s0);
    out[c + 1] = finish(l, c + 1, s1);
  }
  if (c < l->out_channels) out[c] = finish(l, c, dot1(x, w, depth));
}

NO_PRESCHEDULE static void int8_vector(const tflq_layer_t* l, const int8_t* x, int8_t* out) {
  const int depth = l->depth;
  const out_range_t range = out_range(l); /* read once: the int8 stores may alias l */
  const int8_t* w = (const int8_t*)l->weights;
  int c = 0;
  /* A blob's channel groups (8, then one of 4): one pointer, read in sequence. The
   * unrolled bodies are written out input by input: gcc keeps that order with the
   * scheduling passes off (NO_PRESCHEDULE); with a helper called per input, rv32 gcc -O2
   * regrouped the loads by channel (w[0], w[4], w[8], ...) and broke the sequential
   * stream. Per 8 inputs of an 8-channel group: 8 input and 64 weight loads, 64 mul,
   * 64 add and 3 for the loop, 3.17 instructions per MAC. */
  if (l->int8_groups) {
    for (; c + 8 <= l->out_channels; c += 8) {
      int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
      const int8_t* xp = x;
      for (const int8_t* end = x + (depth & ~7); xp != end; xp += 8, w += 64) {
        TFLQ_MAC8(s0, s1, s2, s3, s4, s5, s6, s7, xp[0], w);
        TFLQ_MAC8(s0, s1, s2, s3, s4, s5, s6, s7, xp[1], w + 8);
        TFLQ_MAC8(s0, s1, s2, s3, s4, s5, s6, s7, xp[2], w + 16);
        TFLQ_MAC8(s0, s1, s2, s3, s4, s5, s6, s7, xp[3], w + 24);
        TFLQ_MAC8(s0, s1, s2, s3, s4, s5, s6, s7, xp[4], w + 32);
        TFLQ_MAC8(s0, s1, s2, s3, s4, s5, s6, s7, xp[5], w + 40);
        TFLQ_MAC8(s0, s1, s2, s3, s4, s5, s6, s7, xp[6], w + 48);
        TFLQ_MAC8(s0, s1, s2, s3, s4, s5, s6, s7, xp[7], w + 56);
      }
      for (const int8_t* last = x + depth; xp != last; ++xp, w += 8)
        TFLQ_MAC8(s0, s1, s2, s3, s4, s5, s6, s7, *xp, w);
      finish4(l, range, c, s0, s1, s2, s3, out);
      finish4(l, range, c + 4, s4, s5, s6, s7, out);
    }
  }
  int8_rest(l, x, out, c, w);
}

/* a0 .. a7 += xa * w[0 .. 7] and b0 .. b7 += xb * w[0 .. 7]: one input of two output
 * positions into an 8-channel group's accumulators, each weight loaded once for both
 * (in address order, as TFLQ_MAC8). */
#define TFLQ_MAC8X2(a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7, xa, xb, w) \
  do {                                                                   \
    const int32_t tflq_a_ = (xa), tflq_b_ = (xb);                        \
    const int8_t* const tflq_w_ = (w);                                   \
    int32_t tflq_v_ = tflq_w_[0];                                        \
    (a0) += tflq_a_ * tflq_v_;                                           \
    (b0) += tflq_b_ * tflq_v_;                                           \
    tflq_v_ = tflq_w_[1];                                                \
    (a1) += tflq_a_ * tflq_v_;                                           \
    (b1) += tflq_b_ * tflq_v_;                                           \
    tflq_v_ = tflq_w_[2];                                                \
    (a2) += tflq_a_ * tflq_v_;                                           \
    (b2) += tflq_b_ * tflq_v_;                                           \
    tflq_v_ = tflq_w_[3];                                                \
    (a3) += tflq_a_ * tflq_v_;                                           \
    (b3) += tflq_b_ * tflq_v_;                                           \
    tflq_v_ = tflq_w_[4];                                                \
    (a4) += tflq_a_ * tflq_v_;                                           \
    (b4) += tflq_b_ * tflq_v_;                                           \
    tflq_v_ = tflq_w_[5];                                                \
    (a5) += tflq_a_ * tflq_v_;                                           \
    (b5) += tflq_b_ * tflq_v_;                                           \
    tflq_v_ = tflq_w_[6];                                                \
    (a6) += tflq_a_ * tflq_v_;                                           \
    (b6) += tflq_b_ * tflq_v_;                                           \
    tflq_v_ = tflq_w_[7];                                                \
    (a7) += tflq_a_ * tflq_v_;                                           \
    (b7) += tflq_b_ * tflq_v_;                                           \
  } while (0)

/* int8_vector for two output positions of a CONV_2D (patches xa, xb; outputs outa,
 * outb): the 8-channel groups read once for both, so each weight load serves two MACs
 * (per 8 inputs of a group: 16 input and 64 weight loads, 128 mul, 128 add, 4 for the
 * loop and a few spills, 2.70 instructions per MAC), then the rest per position. */
NO_PRESCHEDULE static void int8_vector2(const tflq_layer_t* l, const int8_t* xa,
                                        const int8_t* xb, int8_t* outa, int8_t* outb) {
  const int depth = l->depth;
  const out_range_t range = out_range(l);
  const int8_t* w = (const int8_t*)l->weights;
  int c = 0;
  for (; c + 8 <= l->out_channels; c += 8) {
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    int32_t b0 = 0, b1 = 0, b2 = 0, b3 = 0, b4 = 0, b5 = 0, b6 = 0, b7 = 0;
    const int8_t* pa = xa;
    const int8_t* pb = xb;
    for (const int8_t* end = xa + (depth & ~7); pa != end; pa += 8, pb += 8, w += 64) {
      TFLQ_MAC8X2(a0, a1, a2, a3, a4, a5, a6, a7,
                  b0, b1, b2, b3, b4, b5, b6, b7, pa[0], pb[0], w);
      TFLQ_MAC8X2(a0, a1, a2, a3, a4, a5, a6, a7,
                  b0, b1, b2, b3, b4, b5, b6, b7, pa[1], pb[1], w + 8);
      TFLQ_MAC8X2(a0, a1, a2, a3, a4, a5, a6, a7,
                  b0, b1, b2, b3, b4, b5, b6, b7, pa[2], pb[2], w + 16);
      TFLQ_MAC8X2(a0, a1, a2, a3, a4, a5, a6, a7,
                  b0, b1, b2, b3, b4, b5, b6, b7, pa[3], pb[3], w + 24);
      TFLQ_MAC8X2(a0, a1, a2, a3, a4, a5, a6, a7,
                  b0, b1, b2, b3, b4, b5, b6, b7, pa[4], pb[4], w + 32);
      TFLQ_MAC8X2(a0, a1, a2, a3, a4, a5, a6, a7,
                  b0, b1, b2, b3, b4, b5, b6, b7, pa[5], pb[5], w + 40);
      TFLQ_MAC8X2(a0, a1, a2, a3, a4, a5, a6, a7,
                  b0, b1, b2, b3, b4, b5, b6, b7, pa[6], pb[6], w + 48);
      TFLQ_MAC8X2(a0, a1, a2, a3, a4, a5, a6, a7,
                  b0, b1, b2, b3, b4, b5, b6, b7, pa[7], pb[7], w + 56);
    }
    for (const int8_t* last = xa + depth; pa != last; ++pa, ++pb, w += 8)
      TFLQ_MAC8X2(a0, a1, a2, a3, a4, a5, a6, a7,
                  b0, b1, b2, b3, b4, b5, b6, b7, *pa, *pb, w);
    finish4(l, range, c, a0, a1, a2, a3, outa);
    finish4(l, range, c + 4, a4, a5, a6, a7, outa);
    finish4(l, range, c, b0, b1, b2, b3, outb);
    finish4(l, range, c + 4, b4, b5, b6, b7, outb);
  }
  int8_rest(l, xa, outa, c, w);
  int8_rest(l, xb, outb, c, w);
}

/* ---- bit planes: 16-entry subset-sum tables of 4 inputs ---- */

static void planes_tables(const int8_t* x, int k0, int count, int depth, int16_t* t) {
  for (int g = 0; g < count; g += 4, t += 16) {
    const int k = k0 + g;
    int32_t v0 = 0, v1 = 0, v2 = 0, v3 = 0;
    if (k + 4 <= depth) {
      v0 = x[k]; v1 = x[k + 1]; v2 = x[k + 2]; v3 = x[k + 3];
    } else {
      if (k < depth) v0 = x[k];
      if (k + 1 < depth) v1 = x[k + 1];
      if (k + 2 < depth) v2 = x[k + 2];
    }
    const int32_t a3 = v0 + v1, b3 = v2 + v3;
    t[0] = 0;                  t[1] = (int16_t)v0;         t[2] = (int16_t)v1;
    t[3] = (int16_t)a3;        t[4] = (int16_t)v2;         t[5] = (int16_t)(v2 + v0);
    t[6] = (int16_t)(v2 + v1); t[7] = (int16_t)(v2 + a3);  t[8] = (int16_t)v3;
    t[9] = (int16_t)(v3 + v0); t[10] = (int16_t)(v3 + v1); t[11] = (int16_t)(v3 + a3);
    t[12] = (int16_t)b3;       t[13] = (int16_t)(b3 + v0); t[14] = (int16_t)(b3 + v1);
    t[15] = (int16_t)(b3 + a3);
  }
}

/* One plane byte of table block t: two nibbles, each a table lookup (the high
 * nibble's table is 16 entries further); byte offsets 2 * nibble come from masks. */
INLINE int32_t plane(const int16_t* t, uint32_t byte) {
  return *(const int16_t*)((const uint8_t*)t + ((byte << 1) & 0x1e)) +
         *(const int16_t*)((const uint8_t*)t + 32 + ((byte >> 3) & 0x1e));
}

INLINE int32_t planes_row(const uint8_t* w, const int16_t* t, int chunks, const int bits) {
  int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  const uint8_t* end = w + chunks * bits;
  for (; w != end; w += bits, t += 32) {
    s0 += plane(t, w[0]);
    if (bits > 1) s1 += plane(t, w[1]);
    if (bits > 2) s2 += plane(t, w[2]);
    if (bits > 3) s3 += plane(t, w[3]);
  }
  return s0 + (s1 << 1) + (s2 << 2) + (s3 << 3);
}

/* ---- codebook: per input, the products with all 2^bits levels ---- */

static void lut_tables(const int8_t* x, int k0, int count, int depth, const int8_t* levels,
                       int bits, int16_t* t) {
  const int n = 1 << bits;
  for (int i = 0; i < count; ++i, t += n) {
    const int32_t v = k0 + i < depth ? x[k0 + i] : 0;
    for (int c = 0; c < n; ++c) t[c] = (int16_t)(v * levels[c]);
  }
}

/* The int16 entry at byte offset `off` of row `row` of tables t (rows of 2^bits
 * entries). */
INLINE int32_t lut(const int16_t* t, int bits, int row, uint32_t off) {
  return *(const int16_t*)((const uint8_t*)t + row * (2 << bits) + off);
}

INLINE int32_t lut_row(const uint8_t* w, const int16_t* t, int chunks, const int bits) {
  int32_t s = 0;
  const uint8_t* end = w + chunks * bits;
  for (; w != end; w += bits, t += 8 << bits) {
    if (bits == 4) { /* 2 codes per byte; byte offsets 2 * code come straight from masks */
      uint32_t b = w[0];
      s += lut(t, bits, 0, (b << 1) & 0x1e) + lut(t, bits, 1, (b >> 3) & 0x1e);
      b = w[1];
      s += lut(t, bits, 2, (b << 1) & 0x1e) + lut(t, bits, 3, (b >> 3) & 0x1e);
      b = w[2];
      s += lut(t, bits, 4, (b << 1) & 0x1e) + lut(t, bits, 5, (b >> 3) & 0x1e);
      b = w[3];
      s += lut(t, bits, 6, (b << 1) & 0x1e) + lut(t, bits, 7, (b >> 3) & 0x1e);
    } else if (bits == 2) {
      uint32_t b = w[0];
      s += lut(t, bits, 0, (b << 1) & 6) + lut(t, bits, 1, (b >> 1) & 6) +
           lut(t, bits, 2, (b >> 3) & 6) + lut(t, bits, 3, (b >> 5) & 6);
      b = w[1];
      s += lut(t, bits, 4, (b << 1) & 6) + lut(t, bits, 5, (b >> 1) & 6) +
           lut(t, bits, 6, (b >> 3) & 6) + lut(t, bits, 7, (b >> 5) & 6);
    } else { /* 3 bits: 8 codes in 24 bits, its bytes read in address order (flash) */
      const uint32_t b = byte_in_order(w) | (byte_in_order(w + 1) << 8) |
                         (byte_in_order(w + 2) << 16);
      s += lut(t, bits, 0, (b << 1) & 14) + lut(t, bits, 1, (b >> 2) & 14) +
           lut(t, bits, 2, (b >> 5) & 14) + lut(t, bits, 3, (b >> 8) & 14) +
           lut(t, bits, 4, (b >> 11) & 14) + lut(t, bits, 5, (b >> 14) & 14) +
           lut(t, bits, 6, (b >> 17) & 14) + lut(t, bits, 7, (b >> 20) & 14);
    }
  }
  return s;
}

/* Code of input k in a packed row (slow path: depthwise and per-channel codebooks). */
static int code_at(const tflq_layer_t* l, const uint8_t* row, int k) {
  const uint8_t* chunk = row + (k >> 3) * l->bits;
  const int r = k & 7;
  int code = 0;
  if (l->format == TFLQ_FMT_PLANES) {
    for (int j = 0; j < l->bits; ++j) code |= ((chunk[j] >> r) & 1) << j;
  } else {
    uint32_t word = 0;
    for (int j = 0; j < l->bits; ++j) word |= (uint32_t)chunk[j] << (8 * j);
    code = (int)((word >> (r * l->bits)) & ((1u << l->bits) - 1));
  }
  return code;
}

/* Weight k of output channel c as an integer (slow path). */
static int32_t weight_at(const tflq_layer_t* l, int c, int k) {
  if (l->format == TFLQ_FMT_INT8) { /* depthwise int8: TFLite's (kh * kw, C) layout */
    const int8_t* w = (const int8_t*)l->weights;
    if (l->op == TFLQ_OP_DEPTHWISE) return w[(size_t)k * l->out_channels + c];
    if (l->int8_groups && c < (l->out_channels & ~7)) /* an 8-channel group */
      return w[(size_t)(c & ~7) * l->depth + 8 * (size_t)k + (c & 7)];
    if (l->int8_groups && c < (l->out_channels & ~3)) /* the 4-channel one, at c & ~3 */
      return w[(size_t)(c & ~3) * l->depth + 4 * (size_t)k + (c & 3)];
    return w[(size_t)c * l->row_bytes + k];
  }
  const uint8_t* row = l->weights + (size_t)c * l->row_bytes;
  const int book = l->per_channel_codebook ? c : 0;
  const int code = code_at(l, row, k);
  if (l->format == TFLQ_FMT_PLANES)
    return l->affine[2 * book] + l->affine[2 * book + 1] * code;
  return l->levels[(book << l->bits) + code];
}

static void slow_vector(const tflq_layer_t* l, const int8_t* x, int8_t* out) {
  for (int c = 0; c < l->out_channels; ++c) {
    int32_t s = 0;
    for (int k = 0; k < l->depth; ++k) s += x[k] * weight_at(l, c, k);
    out[c] = finish(l, c, s);
  }
}

/* Shared-table engine: PLANES (any codebook flag) and LUT with one codebook. The
 * constant arguments give one specialised loop per (format, bits, blocked). */
INLINE int32_t planes_total(const tflq_layer_t* l, int c, int32_t sum_x, int32_t s) {
  const int book = l->per_channel_codebook ? c : 0;
  return l->affine[2 * book] * sum_x + l->affine[2 * book + 1] * s;
}

INLINE void table_vector(const tflq_layer_t* l, const int8_t* x, int8_t* out, void* scratch,
                         const int planes, const int bits) {
  const int block = block_inputs(l);
  const int padded = (l->depth + 7) & ~7;
  int16_t* tables = (int16_t*)scratch;
  const size_t table_bytes = planes ? (size_t)block / 4 * 32 : (size_t)block * (2u << bits);
  int32_t* acc = (int32_t*)((uint8_t*)scratch + table_bytes);
  int32_t sum_x = 0;
  if (planes)
    for (int k = 0; k < l->depth; ++k) sum_x += x[k];
  const int channels = l->out_channels, row_bytes = l->row_bytes;
  if (block >= l->depth) { /* one block: finish each channel as it is summed */
    if (planes)
      planes_tables(x, 0, padded, l->depth, tables);
    else
      lut_tables(x, 0, padded, l->depth, l->levels, bits, tables);
    const uint8_t* w = l->weights;
    for (int c = 0; c < channels; ++c, w += row_bytes) {
      if (planes)
        out[c] = finish(l, c, planes_total(l, c, sum_x, planes_row(w, tables, padded >> 3, bits)));
      else
        out[c] = finish(l, c, lut_row(w, tables, padded >> 3, bits));
    }
    return;
  }
  for (int k0 = 0; k0 < padded; k0 += block) {
    const int count = padded - k0 < block ? padded - k0 : block;
    if (planes)
      planes_tables(x, k0, count, l->depth, tables);
    else
      lut_tables(x, k0, count, l->depth, l->levels, bits, tables);
    const uint8_t* w = l->weights + (size_t)(k0 >> 3) * bits;
    for (int c = 0; c < channels; ++c, w += row_bytes) {
      const int32_t s = planes ? planes_row(w, tables, count >> 3, bits)
                               : lut_row(w, tables, count >> 3, bits);
      acc[c] = k0 == 0 ? s : acc[c] + s;
    }
  }
  for (int c = 0; c < channels; ++c)
    out[c] = finish(l, c, planes ? planes_total(l, c, sum_x, acc[c]) : acc[c]);
}

/* ---- bit-serial: low-bit inputs x low-bit weights, AND and popcount ----
 * RV32IMAC has no popcount instruction: SWAR counts per nibble (at most 4), three
 * words' nibbles added (at most 12), then bytes (at most 24 per three words, six
 * words per flush: 48), and one multiply sums the four bytes. */

INLINE uint32_t nibble_counts(uint32_t v) {
  v = v - ((v >> 1) & 0x55555555u);
  return (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
}

/* Per-byte sums of nibble counts (each nibble <= 15, so each byte <= 30). */
INLINE uint32_t byte_counts(uint32_t nibbles) {
  return (nibbles & 0x0f0f0f0fu) + ((nibbles >> 4) & 0x0f0f0f0fu);
}

INLINE int32_t sum_bytes(uint32_t bytes) { /* each byte <= 63 */
  return (int32_t)((bytes * 0x01010101u) >> 24);
}

/* Per-byte popcounts of a[0..2] & b[0..2] (each <= 24): a carry-save adder first
 * (ones = x0 ^ x1 ^ x2, twos = majority), so three words cost two SWAR counts. */
INLINE uint32_t csa3_counts(const uint32_t* a, const uint32_t* b) {
  const uint32_t x0 = a[0] & b[0], x1 = a[1] & b[1], x2 = a[2] & b[2];
  const uint32_t u = x0 ^ x1, ones = u ^ x2, twos = (x0 & x1) | (u & x2);
  return byte_counts(nibble_counts(ones) + (nibble_counts(twos) << 1)); /* nibbles <= 12 */
}

/* sum over g < words of popcount(a[g] & b[g * stride]), three words at a time through
 * the same carry-save adder. */
INLINE int32_t and_popcount(const uint32_t* a, const uint32_t* b, const int stride, int words) {
  int32_t total = 0;
  while (words > 0) {
    const int n = words < 6 ? words : 6;
    uint32_t bytes = 0;
    int g = 0;
    for (; g + 3 <= n; g += 3) {
      const uint32_t x0 = a[g] & b[g * stride], x1 = a[g + 1] & b[(g + 1) * stride];
      const uint32_t x2 = a[g + 2] & b[(g + 2) * stride];
      const uint32_t u = x0 ^ x1, ones = u ^ x2, twos = (x0 & x1) | (u & x2);
      bytes += byte_counts(nibble_counts(ones) + (nibble_counts(twos) << 1));
    }
    for (; g < n; ++g) bytes += byte_counts(nibble_counts(a[g] & b[g * stride]));
    total += sum_bytes(bytes);
    a += n;
    b += n * stride;
    words -= n;
  }
  return total;
}

/* The input's in_bits bit-planes: planes[i * words + g] holds bit i of a = x & (2^in_bits
 * - 1) for inputs 32g .. 32g + 31 (input r at bit r). Returns sum(a). Four inputs at a
 * time: bit i of each byte, masked to bits 0, 8, 16, 24, is gathered into four adjacent
 * bits by one multiply (no partial products collide). */
static int32_t bit_planes(const int8_t* x, int depth, int in_bits, uint32_t* planes) {
  const int words = (depth + 31) >> 5;
  const uint32_t mask = ((1u << in_bits) - 1) * 0x01010101u;
  memset(planes, 0, 4 * (size_t)in_bits * (size_t)words);
  const uint8_t* u = (const uint8_t*)x;
  for (int k = 0; k < depth; k += 4) {
    uint32_t quad; /* inputs k .. k + 3, little-endian; byte loads: x may be unaligned */
    if (k + 4 <= depth) {
      quad = (uint32_t)u[k] | ((uint32_t)u[k + 1] << 8) | ((uint32_t)u[k + 2] << 16) |
             ((uint32_t)u[k + 3] << 24);
    } else {
      quad = 0;
      for (int r = 0; k + r < depth; ++r) quad |= (uint32_t)u[k + r] << (8 * r);
    }
    quad &= mask;
    uint32_t* p = planes + (k >> 5);
    for (int i = 0; i < in_bits; ++i, p += words)
      *p |= ((((quad >> i) & 0x01010101u) * 0x10204080u) >> 28) << (k & 31);
  }
  int32_t sum = 0;
  for (int i = 0; i < in_bits; ++i)
    sum += and_popcount(planes + i * words, planes + i * words, 1, words) << i;
  return sum;
}

INLINE void bitserial_vector(const tflq_layer_t* l, const int8_t* x, int8_t* out,
                             void* scratch, const int bits, const int in_bits) {
  const int words = (l->depth + 31) >> 5;
  uint32_t* planes = (uint32_t*)scratch;
  const int32_t sum_a = bit_planes(x, l->depth, in_bits, planes);
  /* Locals, not l->...: the int8 stores below may alias the layer for the compiler. */
  const uint32_t* w = (const uint32_t*)l->weights; /* rows are whole words (checked) */
  const int16_t* book = l->affine;
  const int step = l->per_channel_codebook ? 2 : 0, channels = l->out_channels;
  const int32_t* bias = l->bias;
  const int32_t* t = l->thresholds;
  const int n = l->out_levels - 1;
  const int32_t low = l->act_min;
  for (int c = 0; c < channels; ++c, w += words * bits, book += step) {
    int32_t s = 0;
    if (bits == 1 && in_bits == 1 && words <= 6) { /* one flush, inline */
      uint32_t bytes = 0;
      int g = 0;
      for (; g + 3 <= words; g += 3) bytes += csa3_counts(planes + g, w + g);
      for (; g < words; ++g) bytes += byte_counts(nibble_counts(planes[g] & w[g]));
      s = sum_bytes(bytes);
    } else if (words <= 6) { /* one flush per (input plane, weight plane), inline */
      for (int j = 0; j < bits; ++j)
        for (int i = 0; i < in_bits; ++i) {
          const uint32_t* a = planes + i * words;
          const uint32_t* b = w + j;
          uint32_t bytes = 0;
          int g = 0;
          for (; g + 3 <= words; g += 3, a += 3, b += 3 * bits) {
            const uint32_t x0 = a[0] & b[0], x1 = a[1] & b[bits], x2 = a[2] & b[2 * bits];
            const uint32_t u = x0 ^ x1, ones = u ^ x2, twos = (x0 & x1) | (u & x2);
            bytes += byte_counts(nibble_counts(ones) + (nibble_counts(twos) << 1));
          }
          for (; g < words; ++g, ++a, b += bits) bytes += byte_counts(nibble_counts(a[0] & b[0]));
          s += sum_bytes(bytes) << (i + j);
        }
    } else {
      for (int j = 0; j < bits; ++j)
        for (int i = 0; i < in_bits; ++i)
          s += and_popcount(planes + i * words, w + j, bits, words) << (i + j);
    }
    const int32_t acc = book[0] * sum_a + book[1] * s;
    if (t != NULL) { /* act_min + #{thresholds <= acc} (at most three) */
      const int32_t a = acc + bias[c];
      int32_t v = low + (a >= t[0]);
      if (n > 1) v += a >= t[1];
      if (n > 2) v += a >= t[2];
      out[c] = (int8_t)v;
      t += n;
    } else {
      out[c] = finish(l, c, acc);
    }
  }
}

/* Not inlined into vector_layer: its loops would make every call of vector_layer (one
 * per conv output pixel) save more registers, for the other formats too. */
__attribute__((noinline)) static void bitserial_layer(const tflq_layer_t* l, const int8_t* x,
                                                      int8_t* out, void* scratch) {
  switch (l->bits * 8 + l->in_bits) { /* specialised loops for the common widths */
    case 1 * 8 + 1: bitserial_vector(l, x, out, scratch, 1, 1); break;
    case 1 * 8 + 2: bitserial_vector(l, x, out, scratch, 1, 2); break;
    case 2 * 8 + 2: bitserial_vector(l, x, out, scratch, 2, 2); break;
    case 2 * 8 + 1: bitserial_vector(l, x, out, scratch, 2, 1); break;
    default: bitserial_vector(l, x, out, scratch, l->bits, l->in_bits); break;
  }
}

static void vector_layer(const tflq_layer_t* l, const int8_t* x, int8_t* out, void* scratch) {
  if (l->format == TFLQ_FMT_INT8) {
    int8_vector(l, x, out);
  } else if (l->format == TFLQ_FMT_BITSERIAL) {
    bitserial_layer(l, x, out, scratch);
  } else if (!uses_shared_tables(l)) {
    slow_vector(l, x, out);
  } else {
    const int planes = l->format == TFLQ_FMT_PLANES;
    switch (l->bits * 2 + planes) { /* one specialised loop per format and width */
      case 2 * 1 + 1: table_vector(l, x, out, scratch, 1, 1); break;
      case 2 * 2 + 1: table_vector(l, x, out, scratch, 1, 2); break;
      case 2 * 3 + 1: table_vector(l, x, out, scratch, 1, 3); break;
      case 2 * 4 + 1: table_vector(l, x, out, scratch, 1, 4); break;
      case 2 * 2: table_vector(l, x, out, scratch, 0, 2); break;
      case 2 * 3: table_vector(l, x, out, scratch, 0, 3); break;
      default: table_vector(l, x, out, scratch, 0, 4); break;
    }
  }
}

/* The patch of output position (oy, ox): gathered into `patch` (padding taps read the
 * input zero point), or, for a 1x1 kernel over int8 input inside the input, where it
 * lies in the input. A kernel row's taps are one run of the input row (kw * cin bytes)
 * where dilation_w is 1: its in-bounds taps are copied as one run. */
INLINE const int8_t* gather(const tflq_layer_t* l, const uint8_t* in, int oy, int ox,
                            int8_t* patch, const int packed_in) {
  const int8_t zero_point = (int8_t)(-l->input_offset);
  const int cin = l->in_c;
  const int iy0 = oy * l->stride_h - l->pad_top, ix0 = ox * l->stride_w - l->pad_left;
  if (l->kh == 1 && l->kw == 1 && !packed_in && iy0 >= 0 && iy0 < l->in_h && ix0 >= 0 &&
      ix0 < l->in_w)
    return (const int8_t*)in + ((size_t)iy0 * l->in_w + ix0) * cin;
  int8_t* dst = patch;
  for (int ky = 0; ky < l->kh; ++ky) {
    const int iy = iy0 + ky * l->dilation_h;
    const int rowin = iy >= 0 && iy < l->in_h;
    if (l->dilation_w == 1 && !packed_in && rowin) {
      int lo = ix0 < 0 ? -ix0 : 0, hi = l->in_w - ix0; /* taps lo .. hi - 1 */
      if (hi > l->kw) hi = l->kw;
      if (hi < 0) hi = 0;
      if (lo > hi) lo = hi;
      fill_bytes(dst, zero_point, lo * cin);
      copy_bytes(dst + lo * cin, in + ((size_t)iy * l->in_w + ix0 + lo) * cin,
                 (size_t)((hi - lo) * cin));
      fill_bytes(dst + hi * cin, zero_point, (l->kw - hi) * cin);
      dst += l->kw * cin;
      continue;
    }
    for (int kx = 0; kx < l->kw; ++kx, dst += cin) {
      const int ix = ix0 + kx * l->dilation_w;
      if (rowin && ix >= 0 && ix < l->in_w) {
        const size_t e = ((size_t)iy * l->in_w + ix) * cin;
        if (packed_in)
          unpack_values(in, e, cin, store_bits(l->in_packed), packed_low(l->in_packed), dst);
        else
          copy_bytes(dst, in + e, (size_t)cin);
      } else {
        fill_bytes(dst, zero_point, cin);
      }
    }
  }
  return patch;
}

/* One loop per (packed input, row buffer) pair. Where positions_per_pass is 2, output
 * positions go in raster-order pairs through int8_vector2, each with its own patch and
 * row buffer. */
INLINE void conv_loop(const tflq_layer_t* l, const uint8_t* in, uint8_t* output, void* scratch,
                      const int packed_in, const int use_row, const tflq_layer_t* whole,
                      int c0) {
  const int padded = (l->depth + 7) & ~7, pass = positions_per_pass(l);
  const int row_bytes = (l->out_channels + 3) & ~3;
  int8_t* row = use_row ? (int8_t*)scratch : NULL;
  int8_t* patch = (int8_t*)scratch + (row ? pass * row_bytes : 0);
  void* rest = (uint8_t*)patch + pass * padded;
  memset(patch, 0, (size_t)(pass * padded));
  int8_t* out = (int8_t*)output;
  const int positions = l->out_h * l->out_w;
  int oy = 0, ox = 0;
  for (int p = 0; p < positions;) {
    const int8_t* x = gather(l, in, oy, ox, patch, packed_in);
    int oy2 = oy, ox2 = ox + 1;
    if (ox2 == l->out_w) ox2 = 0, ++oy2;
    if (pass == 2 && p + 1 < positions) {
      const int8_t* x2 = gather(l, in, oy2, ox2, patch + padded, packed_in);
      if (use_row) {
        int8_vector2(l, x, x2, row, row + row_bytes);
        emit(whole, oy, ox, row, c0, l->out_channels, output);
        emit(whole, oy2, ox2, row + row_bytes, c0, l->out_channels, output);
      } else {
        int8_vector2(l, x, x2, out + c0, out + whole->out_channels + c0);
        out += 2 * whole->out_channels;
      }
      p += 2;
      oy = oy2, ox = ox2 + 1;
      if (ox == l->out_w) ox = 0, ++oy;
      continue;
    }
    if (use_row) {
      vector_layer(l, x, row, rest);
      emit(whole, oy, ox, row, c0, l->out_channels, output);
    } else {
      vector_layer(l, x, out + c0, rest);
      out += whole->out_channels;
    }
    p += 1;
    oy = oy2, ox = ox2;
  }
}

/* Output channels c0 .. c0 + l->out_channels of the layer `whole` (l: those channels).
 * INLINE_COPIES keeps copy_bytes and fill_bytes loops, which gcc -O2 otherwise turns
 * back into library calls. */
INLINE_COPIES static void conv_channels(const tflq_layer_t* l, const uint8_t* in, uint8_t* output,
                          void* scratch, const tflq_layer_t* whole, int c0) {
  switch ((l->in_packed != 0) * 2 + uses_row_buffer(l)) {
    case 0: conv_loop(l, in, output, scratch, 0, 0, whole, c0); break;
    case 1: conv_loop(l, in, output, scratch, 0, 1, whole, c0); break;
    case 2: conv_loop(l, in, output, scratch, 1, 0, whole, c0); break;
    default: conv_loop(l, in, output, scratch, 1, 1, whole, c0); break;
  }
}

/* With stage_channels, one block of output channels at a time: its rows (contiguous in
 * the blob, int8 channel groups included, as blocks start at multiples of 8) and
 * every per-channel constant it reads (bias, multiplier, shift, thresholds, codebooks)
 * are copied into the end of scratch, each read from the blob once, in sequence, and
 * the loop runs on a layer whose arrays point there (tflq_stage_bytes gives the
 * layout). */
INLINE_COPIES static void conv(const tflq_layer_t* l, const uint8_t* in, uint8_t* output,
                                void* scratch) {
  if (!l->stage_channels) {
    conv_channels(l, in, output, scratch, l, 0);
    return;
  }
  uint8_t* const stage = (uint8_t*)scratch + kernel_scratch_bytes(l);
  tflq_layer_t block = *l;
  for (int c0 = 0; c0 < l->out_channels; c0 += l->stage_channels) {
    const int n = l->out_channels - c0 < l->stage_channels ? l->out_channels - c0
                                                            : l->stage_channels;
    const size_t rows = (size_t)n * (size_t)l->row_bytes;
    copy_bytes(stage, l->weights + (size_t)c0 * (size_t)l->row_bytes, rows);
    block.weights = stage;
    int32_t* word = (int32_t*)(stage + round4(rows));
    copy_bytes(word, l->bias + c0, 4 * (size_t)n);
    block.bias = word;
    word += n;
    if (l->requant_per_channel) {
      copy_bytes(word, l->multiplier + c0, 4 * (size_t)n);
      block.multiplier = word;
      copy_bytes(word + n, l->shift + c0, 4 * (size_t)n);
      block.shift = word + n;
      word += 2 * n;
    }
    if (l->thresholds) {
      const size_t per = (size_t)(l->out_levels - 1);
      copy_bytes(word, l->thresholds + (size_t)c0 * per, 4 * (size_t)n * per);
      block.thresholds = word;
      word += (size_t)n * per;
    }
    const size_t books = stage_codebooks(l, (size_t)n);
    const size_t first = l->per_channel_codebook ? (size_t)c0 : 0;
    uint8_t* next = (uint8_t*)word;
    if (l->affine) {
      copy_bytes(next, l->affine + 2 * first, 4 * books);
      block.affine = (const int16_t*)next;
      next += 4 * books;
    }
    if (l->levels) {
      copy_bytes(next, l->levels + (first << l->bits), books << l->bits);
      block.levels = (const int8_t*)next;
    }
    block.out_channels = n;
    conv_channels(&block, in, output, scratch, l, c0);
  }
}

/* A line a 3x3 depthwise sweep walks, of one channel: an output row, or a column where
 * the columns are longer (and input and output as wide: one step for both), and the
 * layer's output constants. Passed by value: an int8 store may alias the layer. */
typedef struct {
  ptrdiff_t step; /* bytes between positions along the line, in the input and the output */
  int pad_before; /* zero-point positions before the first input position (<= 2) */
  int inner;      /* outputs completed by input positions (after the first two positions) */
  int behind;     /* outputs completed by zero-point positions behind the line */
  int32_t zp, offset, lo, hi;
} dw_line_t;

/* The output constants and requantization of one channel. `rounding` is the requantized
 * value's rounding and offset folded into one addition, which the channel uses where
 * no accumulator can overflow it (see dw3x3_plane); otherwise tflq_requant_shifted. */
typedef struct {
  tflq_requant_t rq;
  int32_t rounding; /* 2^(right - 1) + offset * 2^right */
} dw_requant_t;

/* The requantized, clamped int8 of one depthwise output from its accumulator times
 * 2^left (the loop's weights and bias carry the left shift). Fast: gemmlowp's
 * rounding division of high = SaturatingRoundingDoublingHighMul(acc, m) by 2^right,
 * plus the offset, as floor((high - [high < 0] + 2^(right - 1) + offset 2^right) /
 * 2^right), exact for right >= 1 where that sum does not overflow. */
INLINE int8_t dw3x3_finish(int32_t shifted_acc, dw_requant_t r, const dw_line_t line,
                           const int fast) {
  int32_t v;
  if (fast) {
    const int64_t product = (int64_t)shifted_acc * (int64_t)r.rq.m2;
    const int32_t high = (int32_t)(product >> 32) + (int32_t)((uint32_t)product >> 31);
    v = (high + (high >> 31) + r.rounding) >> r.rq.right;
  } else {
    v = tflq_requant_shifted(shifted_acc, r.rq) + line.offset;
  }
  if (v < line.lo) v = line.lo;
  if (v > line.hi) v = line.hi;
  return (int8_t)v;
}

/* One output line of one channel of the 3x3 depthwise loop. The line's input
 * positions, padded with pad_before zero-point positions in front and the rest behind,
 * arrive one at a time; position j holds (a, b, d) from the three neighbouring input
 * lines r0, r1, r2 and adds its first, middle and last sums (weights wRT: input line
 * R, tap T along it) to outputs j, j - 1 and j - 2, the last of which is then complete.
 * So each output loads 3 inputs and keeps 2 partial sums. A zero-point position adds
 * the constants zp * (its weights' sum). `acc` holds the bias and the lines outside
 * the input, whose weights are 0 (so that, inlined with constant zeros, their loads
 * and products drop out). Weights and acc are times 2^left. */
INLINE void dw3x3_line(const dw_line_t line, const int8_t* r0, const int8_t* r1,
                       const int8_t* r2, int8_t* o, int32_t acc, dw_requant_t rq,
                       const int fast, int32_t w00, int32_t w01, int32_t w02, int32_t w10,
                       int32_t w11, int32_t w12, int32_t w20, int32_t w21, int32_t w22) {
  const ptrdiff_t step = line.step;
  const int32_t zl = line.zp * (w00 + w10 + w20), zm = line.zp * (w01 + w11 + w21),
                zr = line.zp * (w02 + w12 + w22);
  int32_t s0, s1; /* partial sums of outputs j and j - 1, past the first two positions */
  if (line.pad_before == 2) {
    s1 = acc + zl + zm;
    s0 = acc + zl;
  } else {
    int32_t a = *r0, b = *r1, d = *r2;
    r0 += step, r1 += step, r2 += step;
    int32_t left = w00 * a + w10 * b + w20 * d, middle = w01 * a + w11 * b + w21 * d;
    if (line.pad_before == 1) {
      s1 = acc + zl + middle;
    } else {
      a = *r0, b = *r1, d = *r2;
      r0 += step, r1 += step, r2 += step;
      s1 = acc + left + w01 * a + w11 * b + w21 * d;
      left = w00 * a + w10 * b + w20 * d;
    }
    s0 = acc + left;
  }
  int8_t* const inner_end = o + (ptrdiff_t)line.inner * step;
  for (; o != inner_end; o += step) { /* input positions: no tests */
    const int32_t a = *r0, b = *r1, d = *r2;
    r0 += step, r1 += step, r2 += step;
    *o = dw3x3_finish(s1 + w02 * a + w12 * b + w22 * d, rq, line, fast);
    s1 = s0 + w01 * a + w11 * b + w21 * d;
    s0 = acc + w00 * a + w10 * b + w20 * d;
  }
  for (int j = 0; j < line.behind; ++j, o += step) { /* zero-point positions behind */
    *o = dw3x3_finish(s1 + zr, rq, line, fast);
    s1 = s0 + zm;
    s0 = acc + zl;
  }
}

/* The weights, bias and requantization of one channel of the 3x3 depthwise loop. */
typedef struct {
  int32_t w[9]; /* [3 * line across + tap along it], times 2^left (wrapping: equal mod 2^32) */
  int32_t acc;  /* the bias times 2^left */
  dw_requant_t rq;
  int fast; /* no accumulator can overflow the fast rounding */
} dw_channel_t;

/* A line of a 3x3 depthwise channel with input lines outside the input, top: the input
 * line of its first tap across. With the fast rounding, a line whose first or last input
 * line is outside (padding) runs a copy of the loop without that line's loads and
 * products; other lines (inputs narrower than the window, padding 2), and channels
 * without it, run the general copy: lines outside read in-range memory with zero
 * weights. */
__attribute__((noinline)) static void dw3x3_edge(const dw_line_t* line_of,
                                                 const dw_channel_t* ch, const int8_t* in,
                                                 int8_t* out, int top, int in_lines,
                                                 size_t in_across) {
  const dw_line_t line = *line_of;
  const int32_t* v = ch->w;
  const int32_t zp = line.zp, acc = ch->acc;
  const dw_requant_t rq = ch->rq;
  const int8_t* r1 = in + (ptrdiff_t)(top + 1) * (ptrdiff_t)in_across;
  if (ch->fast && top == -1 && top + 2 < in_lines) {
    dw3x3_line(line, r1, r1, r1 + in_across, out, acc + zp * (v[0] + v[1] + v[2]), rq, 1, 0,
               0, 0, v[3], v[4], v[5], v[6], v[7], v[8]);
  } else if (ch->fast && top >= 0 && top + 2 == in_lines) {
    dw3x3_line(line, r1 - in_across, r1, r1, out, acc + zp * (v[6] + v[7] + v[8]), rq, 1,
               v[0], v[1], v[2], v[3], v[4], v[5], 0, 0, 0);
  } else {
    const int8_t* rows[3];
    int32_t u[9], a = acc;
    for (int r = 0; r < 3; ++r) {
      const int at = top + r, inside = at >= 0 && at < in_lines;
      rows[r] = in + (inside ? (size_t)at * in_across : 0);
      for (int k = 3 * r; k < 3 * r + 3; ++k) {
        u[k] = inside ? v[k] : 0;
        a += inside ? 0 : zp * v[k];
      }
    }
    dw3x3_line(line, rows[0], rows[1], rows[2], out, a, rq, 0, u[0], u[1], u[2], u[3], u[4],
               u[5], u[6], u[7], u[8]);
  }
}

/* The lines of one channel of the 3x3 depthwise loop: the lines with all three input
 * lines inside in one loop of their own, which holds the weights and requantization in
 * registers across them, and the lines before and after through dw3x3_edge. The fast
 * rounding is used where no accumulator can overflow it: |bias| + 128 sum |w| bounds
 * every sum, inputs and zero point being in -128 .. 127. */
__attribute__((noinline)) static void dw3x3_plane(const dw_line_t* line_of, const int8_t* in,
                                                  int8_t* out, const int32_t* w,
                                                  int32_t bias, int32_t multiplier,
                                                  int32_t shift, int lines, int in_lines,
                                                  int pad_across, size_t in_across,
                                                  size_t out_across) {
  dw_channel_t ch;
  ch.rq.rq = tflq_requant_make(multiplier, shift);
  uint32_t bound = bias < 0 ? -(uint32_t)bias : (uint32_t)bias; /* <= 2^31 */
  for (int k = 0; k < 9; ++k) {
    ch.w[k] = (int32_t)((uint32_t)w[k] << ch.rq.rq.left);
    bound += 128u * (uint32_t)(w[k] < 0 ? -w[k] : w[k]); /* < 2^31 + 2^18 */
  }
  ch.acc = (int32_t)((uint32_t)bias << ch.rq.rq.left);
  const int32_t right = ch.rq.rq.right;
  /* |high| <= bound + 1 and |rounding| <= 2^(right - 1) + 128 2^right: their sum below 2^31. */
  ch.fast = right >= 1 && right <= 22 &&
            bound + 1u + (1u << (right - 1)) + (128u << right) < 0x80000000u;
  ch.rq.rounding = (int32_t)((1u << (right - 1)) + ((uint32_t)line_of->offset << right));
  /* Lines [first, last) have their three input lines inside. */
  const int first = pad_across < lines ? pad_across : lines;
  int last = in_lines - 2 + pad_across < lines ? in_lines - 2 + pad_across : lines;
  if (last < first || !ch.fast) last = first;
  int i = 0;
  for (; i < first; ++i, out += out_across)
    dw3x3_edge(line_of, &ch, in, out, i - pad_across, in_lines, in_across);
  if (i < last) {
    const dw_line_t line = *line_of;
    const int32_t w00 = ch.w[0], w01 = ch.w[1], w02 = ch.w[2], w10 = ch.w[3], w11 = ch.w[4],
                  w12 = ch.w[5], w20 = ch.w[6], w21 = ch.w[7], w22 = ch.w[8];
    const int32_t acc = ch.acc;
    const dw_requant_t rq = ch.rq;
    const int8_t* r0 = in + (ptrdiff_t)(i - pad_across) * (ptrdiff_t)in_across;
    for (; i < last; ++i, out += out_across, r0 += in_across)
      dw3x3_line(line, r0, r0 + in_across, r0 + 2 * in_across, out, acc, rq, 1, w00, w01, w02,
                 w10, w11, w12, w20, w21, w22);
  }
  for (; i < lines; ++i, out += out_across)
    dw3x3_edge(line_of, &ch, in, out, i - pad_across, in_lines, in_across);
}

/* DEPTHWISE_CONV_2D 3x3, stride 1, no dilation, multiplier 1, int8 input and output
 * stored directly (padding <= 2): one channel at a time, one dw3x3_plane each, along
 * rows, or down columns where those are longer (DS-CNN's 25x5: 5 outputs a row, 25 a
 * column) and the output is as wide as the input. */
static void depthwise3x3(const tflq_layer_t* l, const int8_t* in, int8_t* out) {
  const int down = l->out_h > l->out_w && l->out_w == l->in_w;
  const int channels = l->out_channels;
  const size_t in_row = (size_t)l->in_w * channels, out_row = (size_t)l->out_w * channels;
  /* Along a line: count outputs from count + 2 positions, pad_before + in_len real. */
  const int count = down ? l->out_h : l->out_w, in_len = down ? l->in_h : l->in_w;
  const int pad_before = down ? l->pad_top : l->pad_left;
  const int real_end = pad_before + in_len < count + 2 ? pad_before + in_len : count + 2;
  const dw_line_t line = {down ? (ptrdiff_t)in_row : channels, pad_before, real_end - 2,
                          count + 2 - real_end, -l->input_offset, l->output_offset,
                          l->act_min, l->act_max};
  /* Lines, and the input lines beside them, across the sweep. */
  const int lines = down ? l->out_w : l->out_h, in_lines = down ? l->in_w : l->in_h;
  const int pad_across = down ? l->pad_left : l->pad_top;
  const size_t in_across = down ? (size_t)channels : in_row;
  const size_t out_across = down ? (size_t)channels : out_row;
  for (int c = 0; c < channels; ++c) {
    int32_t w[9]; /* [3 * line across + tap along it] */
    for (int k = 0; k < 9; ++k)
      w[down ? 3 * (k % 3) + k / 3 : k] = weight_at(l, c, k); /* k: 3 * ky + kx */
    const int q = l->requant_per_channel ? c : 0;
    dw3x3_plane(&line, in + c, out + c, w, l->bias[c], l->multiplier[q], l->shift[q], lines,
                in_lines, pad_across, in_across, out_across);
  }
}

static void depthwise(const tflq_layer_t* l, const uint8_t* in, uint8_t* output) {
  if (l->kh == 3 && l->kw == 3 && l->stride_h == 1 && l->stride_w == 1 &&
      l->dilation_h == 1 && l->dilation_w == 1 && l->depth_multiplier == 1 &&
      l->pad_left <= 2 && l->pad_top <= 2 && !l->in_packed && !l->out_packed && !l->pool_kh) {
    depthwise3x3(l, (const int8_t*)in, (int8_t*)output);
    return;
  }
  const int taps = l->kh * l->kw, channels = l->out_channels, cin = l->in_c;
  const int32_t zero_point = -l->input_offset;
  const int s_in = store_bits(l->in_packed), in_low = packed_low(l->in_packed);
  const int direct = !l->out_packed && !l->pool_kh;
  for (int c = 0; c < channels; ++c) {
    int8_t w[64]; /* one channel's taps, at most 64 (checked) */
    for (int k = 0; k < taps; ++k) w[k] = (int8_t)weight_at(l, c, k);
    const int ic = c / l->depth_multiplier;
    int8_t* out = (int8_t*)output + c;
    for (int oy = 0; oy < l->out_h; ++oy) {
      for (int ox = 0; ox < l->out_w; ++ox, out += channels) {
        int32_t sum = 0;
        for (int ky = 0; ky < l->kh; ++ky) {
          const int iy = oy * l->stride_h - l->pad_top + ky * l->dilation_h;
          for (int kx = 0; kx < l->kw; ++kx) {
            const int ix = ox * l->stride_w - l->pad_left + kx * l->dilation_w;
            int32_t x = zero_point;
            if (iy >= 0 && iy < l->in_h && ix >= 0 && ix < l->in_w) {
              const size_t e = ((size_t)iy * l->in_w + ix) * cin + ic;
              x = s_in ? in_low + (int32_t)get_code(in, e, s_in) : (int8_t)in[e];
            }
            sum += x * w[ky * l->kw + kx];
          }
        }
        const int8_t v = finish(l, c, sum);
        if (direct)
          *out = v;
        else
          emit(l, oy, ox, &v, c, 1, output);
      }
    }
  }
}

static void fully_connected(const tflq_layer_t* l, const uint8_t* in, uint8_t* output,
                            void* scratch) {
  int8_t* row = uses_row_buffer(l) ? (int8_t*)scratch : NULL;
  int8_t* x = (int8_t*)scratch + (row ? (l->out_channels + 3) & ~3 : 0);
  void* rest = x;
  if (l->in_packed) {
    unpack_values(in, 0, l->depth, store_bits(l->in_packed), packed_low(l->in_packed), x);
    rest = (uint8_t*)x + ((l->depth + 7) & ~7);
  } else {
    x = (int8_t*)in;
  }
  if (row) {
    vector_layer(l, x, row, rest);
    emit(l, 0, 0, row, 0, l->out_channels, output);
  } else {
    vector_layer(l, x, (int8_t*)output, rest);
  }
}

void tflq_layer_eval(const tflq_layer_t* l, const void* input, int batches, void* output,
                     void* scratch) {
  const size_t in_bytes = tflq_input_bytes(l), out_bytes = tflq_output_bytes(l);
  for (int b = 0; b < batches; ++b) {
    const uint8_t* in = (const uint8_t*)input + (size_t)b * in_bytes;
    uint8_t* out = (uint8_t*)output + (size_t)b * out_bytes;
    if (l->out_packed || l->pool_kh) /* packed codes are ORed in; pools start at their least */
      memset(out, l->out_packed ? 0 : (uint8_t)(int8_t)l->act_min, out_bytes);
    if (l->op == TFLQ_OP_CONV)
      conv(l, in, out, scratch);
    else if (l->op == TFLQ_OP_DEPTHWISE)
      depthwise(l, in, out);
    else
      fully_connected(l, in, out, scratch);
  }
}
