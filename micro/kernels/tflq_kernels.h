/*
 * tflq's int8 and packed low-bit layer kernels for rv32imac: plain C, no TFLM types.
 *
 * One layer (FULLY_CONNECTED, CONV_2D or DEPTHWISE_CONV_2D) is a tflq_layer_t. Its
 * weights are read where they are stored (flash or RAM) and never expanded:
 *
 *   TFLQ_FMT_INT8    int8: in a blob (FC, CONV_2D), output channels in groups of
 *                    8 while 8 remain, then one group of 4 if 4 remain, each group's
 *                    g * depth bytes ordered by input (w[c][k], w[c+1][k], ..,
 *                    w[c+g-1][k], then k + 1), so the group loop reads the weights as
 *                    one sequential stream, which the FE310's flash serves without a
 *                    new command per load; the last out_channels % 4 channels as rows
 *                    of `depth` bytes. Filled from TFLite tensors (int8_groups 0):
 *                    TFLite's layout, a row per output channel (DEPTHWISE_CONV_2D,
 *                    blob or not: (kh * kw, out_channels)).
 *   TFLQ_FMT_PLANES  an affine codebook per channel, w = v0 + d * code, code of
 *                    `bits` (1..4) bits stored as bit-planes: per 8 inputs, `bits`
 *                    bytes; byte j holds bit j of the 8 codes (low nibble: inputs
 *                    0..3, high nibble: 4..7; bit k of a nibble: input k). Each
 *                    nibble indexes a 16-entry subset-sum table of 4 inputs shared
 *                    by all output channels: no multiply per weight. Ternary (bits 2)
 *                    and binary (bits 1) weights, fixed-point, min-max and DoReFa
 *                    codebooks take this path.
 *   TFLQ_FMT_LUT     any codebook of 2^bits (2..4) int8 levels: codes of `bits` bits,
 *                    8 codes per `bits` bytes, LSB first. Each code indexes a table
 *                    of input x level products built once per input block and shared
 *                    by all output channels: no multiply per weight. Log /
 *                    power-of-two codebooks take this path.
 *   TFLQ_FMT_BITSERIAL  affine codes (as PLANES) times low-bit *inputs*: the layer's
 *                    input holds only the codes lo .. 127, lo = 128 - 2^in_bits (a
 *                    low-bit activation, tflq.quantizers.activations), so a = x & (2^in_bits
 *                    - 1) = x - lo. Weights: per 32 inputs, `bits` u32 words, word j =
 *                    bit j of the 32 codes (input r at bit r). sum(a * code) is
 *                    sum over planes of popcount(A_i & C_j) << (i + j): AND and SWAR
 *                    popcount, 32 MACs per word pair. FC and CONV_2D only.
 *
 * Arithmetic is TFLM's reference int8 arithmetic, bit for bit: the accumulator
 * sum((x + input_offset) * w) + bias is computed as sum(x * w) + bias_eff with
 * bias_eff = bias + input_offset * sum(w) (padding taps read the input zero point,
 * so they contribute nothing), then requantized with gemmlowp's double rounding
 * (TFLM's MultiplyByQuantizedMultiplier), offset and clamped.
 *
 * Activations (the layer's input and output tensors) are int8 (NHWC), or *packed*:
 * a tensor whose values can only be the 2^k codes 128 - 2^k .. 127 (k = 1..4, a
 * low-bit activation) may be stored as codes c = x - (128 - 2^k) of s bits each
 * (s = k, but 4 for k = 3), LSB first, element e (NHWC order) at bit e * s:
 * ceil(values * s / 8) bytes per batch (tflq_tensor_bytes). in_packed / out_packed
 * give k (0: int8). A max-pool may be fused into a CONV_2D or DEPTHWISE_CONV_2D's
 * output (pool_kh > 0): the output tensor is then TFLM's MAX_POOL_2D of the layer's
 * output (window pool_kh x pool_kw, strides, padding top / left, pool_out_h x
 * pool_out_w), exact in codes because max is monotone; the un-pooled output is never
 * stored.
 *
 * The packed blob ("TQP2", converters/packed_format.py is the one writer) is
 * little-endian, 4-byte aligned, and self-describing:
 *   0  'T' 'Q' 'P' '1'
 *   4  u8 op, u8 format, u8 bits, u8 flags (bit 0: one codebook per channel)
 *   8  u16 out_channels, u16 depth (inputs per output channel)
 *  12  u16 in_h, in_w, in_c, out_h, out_w, depth_multiplier
 *  24  u8 kh, kw, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left
 *  32  i32 input_offset, output_offset, act_min, act_max
 *  48  u32 row_bytes, u32 total_bytes
 *  56  u8 in_packed, out_packed, pool_kh, pool_kw, pool_stride_h, pool_stride_w,
 *      pool_pad_top, pool_pad_left
 *  64  u16 pool_out_h, pool_out_w
 *   4  u8 flags: bit 0 one codebook per channel; BITSERIAL: bits 1..3 in_bits (1..4),
 *      bit 4 output thresholds; bit 5 (TFLQ_FLAG_IN_RAM, any format) the weights
 *      live in RAM: TFLQ_PACKED copies the blob into the arena at Prepare, so an
 *      inference reads none of it from flash (converters/packing.py: stage_in_ram
 *      sets it where the RAM left allows)
 *  68  i32 bias_eff[C], i32 multiplier[C], i32 shift[C]
 *      (BITSERIAL: bias_eff = bias + (input_offset + lo) * sum(w), added to sum(a * w))
 *      codebook: PLANES and BITSERIAL i16 (v0, d)[n]; LUT i8 levels[2^bits * n];
 *      n = C or 1; zero-padded to 4 bytes
 *      BITSERIAL with bit 4: i32 thresholds[C * (L - 1)], L = act_max - act_min + 1
 *      output codes (2..4): output = act_min + #{t : acc >= t} for acc = sum(a * w) +
 *      bias_eff, which equals requantize-and-clamp because requantization is monotone
 *      (converters/packed_format.py proves it on the acc range when it writes them)
 *      weights: C rows of row_bytes (INT8: depth, FC / CONV_2D in groups as above; BITSERIAL: 4 * bits * ceil(depth /
 *      32), so rows are word-aligned; else bits * ceil(depth / 8))
 */
#ifndef TFLQ_KERNELS_H_
#define TFLQ_KERNELS_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { TFLQ_OP_FC = 1, TFLQ_OP_CONV = 2, TFLQ_OP_DEPTHWISE = 3 };
enum { TFLQ_FMT_INT8 = 0, TFLQ_FMT_PLANES = 1, TFLQ_FMT_LUT = 2, TFLQ_FMT_BITSERIAL = 3 };
enum { TFLQ_HEADER_BYTES = 68 };
enum { TFLQ_FLAG_IN_RAM = 0x20 };
/* stage_channels is a multiple of this (or all channels): a block then starts at a
 * multiple of 8, so it holds whole int8 channel groups. */
enum { TFLQ_STAGE_UNIT = 8 };

typedef struct {
  int op, format, bits, per_channel_codebook;
  int out_channels, depth;
  int in_h, in_w, in_c, out_h, out_w, depth_multiplier;  /* FC: 1, 1, depth, 1, 1, 1 */
  int kh, kw, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
  int32_t input_offset, output_offset, act_min, act_max;
  int row_bytes;
  const int32_t* bias;        /* bias_eff per channel (see above) */
  const int32_t* multiplier;  /* per channel (or one: requant_per_channel 0) */
  const int32_t* shift;       /* likewise; TFLM's convention (> 0: left) */
  int requant_per_channel;    /* packed blobs: 1; per-tensor int8 FC: 0 */
  const int16_t* affine;      /* PLANES, BITSERIAL: (v0, d) per channel or one pair */
  int in_bits;                /* BITSERIAL: bits of the input codes (1..4); else 0 */
  int out_levels;             /* BITSERIAL with thresholds: output codes (2..4); else 0 */
  const int32_t* thresholds;  /* BITSERIAL: out_levels - 1 per channel, or NULL */
  const int8_t* levels;       /* LUT: 2^bits levels per channel or one set */
  const uint8_t* weights;     /* out_channels rows of row_bytes */
  int int8_groups;            /* INT8 FC / CONV_2D from a blob: channel groups (above) */
  int in_packed, out_packed;  /* k of packed input / output codes (1..4); 0: int8 */
  int pool_kh, pool_kw, pool_stride_h, pool_stride_w, pool_pad_top, pool_pad_left;
  int pool_out_h, pool_out_w; /* fused max-pool (pool_kh 0: none) */
  int stage_channels;         /* CONV_2D: copy the rows and bias, multiplier and shift of
                               * this many output channels at a time into scratch (a
                               * multiple of TFLQ_STAGE_UNIT, or all), so each is read from the blob
                               * once per inference, not once per output position; 0:
                               * read in place. Not in the blob: TFLQ_PACKED's custom
                               * options (decode leaves it 0). */
} tflq_layer_t;

/* Parses and checks a packed blob of `length` bytes into *layer (pointing into the
 * blob). Returns 0, or -1 with a message in err (never reads past the blob). */
int tflq_layer_parse(const uint8_t* blob, size_t length, tflq_layer_t* layer, char* err,
                     size_t err_size);

/* Fills *layer from a blob that tflq_layer_parse has accepted, with no checks: what
 * Eval does, so that the blob is validated once, at Prepare. */
void tflq_layer_decode(const uint8_t* blob, tflq_layer_t* layer);

/* Sets layer->stage_channels to `channels` and checks the layer (0 or -1 with err). */
int tflq_layer_stage(tflq_layer_t* layer, int channels, char* err, size_t err_size);

/* Checks a layer's fields for consistency (parse calls it; the TFLM int8 kernels
 * fill a layer from tensors and call it too). Returns 0 or -1 with err. */
int tflq_layer_check(const tflq_layer_t* layer, char* err, size_t err_size);

/* Bytes of scratch RAM tflq_layer_eval needs (tables, accumulators, patch, and the
 * stage_channels block of rows and constants). */
size_t tflq_scratch_bytes(const tflq_layer_t* layer);

/* Bytes the block of `channels` output channels' rows and constants takes in scratch. */
size_t tflq_stage_bytes(const tflq_layer_t* layer, int channels);

/* Bytes of one batch of `values` activations stored with packed k (0: int8). */
size_t tflq_tensor_bytes(size_t values, int packed);

/* Bytes of one batch of the layer's input and of its output (pooled, packed). */
size_t tflq_input_bytes(const tflq_layer_t* layer);
size_t tflq_output_bytes(const tflq_layer_t* layer);

/* Runs the layer on `batches` inputs of tflq_input_bytes each (in_h * in_w * in_c
 * values, NHWC, int8 or packed) into tflq_output_bytes each. scratch:
 * tflq_scratch_bytes bytes, 4-byte aligned. */
void tflq_layer_eval(const tflq_layer_t* layer, const void* input, int batches, void* output,
                     void* scratch);

/* TFLM's MultiplyByQuantizedMultiplier (gemmlowp double rounding), for the host tests;
 * the kernels inline tflq_requantize.h, the one definition. */
int32_t tflq_requantize(int32_t acc, int32_t multiplier, int32_t shift);

#ifdef __cplusplus
}
#endif

#endif  /* TFLQ_KERNELS_H_ */
