/* Parsing and checking of tflq layers (format: tflq_kernels.h). Every bound the
 * kernels rely on is checked here, so a corrupt blob is refused, never read past. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "tflq_kernels.h"

static int fail(char* err, size_t err_size, const char* fmt, ...) {
  if (err != NULL && err_size > 0) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(err, err_size, fmt, args);
    va_end(args);
  }
  return -1;
}

static uint32_t u16(const uint8_t* p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }
static uint32_t u32(const uint8_t* p) {
  return u16(p) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int expected_row_bytes(int format, int bits, int depth) {
  if (format == TFLQ_FMT_BITSERIAL) return 4 * bits * ((depth + 31) / 32);
  return format == TFLQ_FMT_INT8 ? depth : bits * ((depth + 7) / 8);
}

size_t tflq_tensor_bytes(size_t values, int packed) {
  if (packed == 0) return values;
  return (values * (size_t)(packed == 3 ? 4 : packed) + 7) / 8;
}

size_t tflq_input_bytes(const tflq_layer_t* l) {
  return tflq_tensor_bytes((size_t)l->in_h * l->in_w * l->in_c, l->in_packed);
}

size_t tflq_output_bytes(const tflq_layer_t* l) {
  const size_t positions = l->pool_kh ? (size_t)l->pool_out_h * l->pool_out_w
                                      : (size_t)l->out_h * l->out_w;
  return tflq_tensor_bytes(positions * l->out_channels, l->out_packed);
}

static const char* op_name(int op) {
  return op == TFLQ_OP_FC ? "FULLY_CONNECTED" : op == TFLQ_OP_CONV ? "CONV_2D"
                                                                   : "DEPTHWISE_CONV_2D";
}

static int check_kind(const tflq_layer_t* l, char* err, size_t n) {
  if (l->op < TFLQ_OP_FC || l->op > TFLQ_OP_DEPTHWISE)
    return fail(err, n, "unknown op %d (1 FC, 2 CONV_2D, 3 DEPTHWISE_CONV_2D)", l->op);
  const char* op = op_name(l->op);
  if (l->format == TFLQ_FMT_INT8) {
    if (l->bits != 8) return fail(err, n, "%s: int8 weights with bit width %d", op, l->bits);
  } else if (l->format == TFLQ_FMT_PLANES) {
    if (l->bits < 1 || l->bits > 4)
      return fail(err, n, "%s: bit-plane weights of %d bits (1..4 supported)", op, l->bits);
  } else if (l->format == TFLQ_FMT_LUT) {
    if (l->bits < 2 || l->bits > 4)
      return fail(err, n, "%s: codebook weights of %d bits (2..4 supported)", op, l->bits);
  } else if (l->format == TFLQ_FMT_BITSERIAL) {
    if (l->bits < 1 || l->bits > 4 || l->in_bits < 1 || l->in_bits > 4)
      return fail(err, n, "%s: bit-serial %d-bit weights x %d-bit inputs (1..4 each)", op,
                  l->bits, l->in_bits);
    if (l->op == TFLQ_OP_DEPTHWISE)
      return fail(err, n, "%s: no bit-serial kernel (FC and CONV_2D only)", op);
    if (l->out_levels != 0 && (l->out_levels < 2 || l->out_levels > 4 ||
                               l->out_levels != l->act_max - l->act_min + 1))
      return fail(err, n, "%s: %d output thresholds for the activation range [%ld, %ld]", op,
                  l->out_levels - 1, (long)l->act_min, (long)l->act_max);
  } else {
    return fail(err, n, "%s: unknown weight format %d", op, l->format);
  }
  return 0;
}

int tflq_layer_check(const tflq_layer_t* l, char* err, size_t n) {
  if (check_kind(l, err, n) != 0) return -1;
  const char* op = op_name(l->op);
  if (l->out_channels < 1 || l->depth < 1 || l->in_h < 1 || l->in_w < 1 || l->in_c < 1 ||
      l->out_h < 1 || l->out_w < 1 || l->kh < 1 || l->kw < 1 || l->stride_h < 1 ||
      l->stride_w < 1 || l->dilation_h < 1 || l->dilation_w < 1 || l->depth_multiplier < 1 ||
      l->pad_top < 0 || l->pad_left < 0)
    return fail(err, n, "%s: a size, stride, dilation or padding is out of range", op);
  if (l->op == TFLQ_OP_FC &&
      (l->in_h != 1 || l->in_w != 1 || l->out_h != 1 || l->out_w != 1 || l->kh != 1 ||
       l->kw != 1 || l->in_c != l->depth || l->depth_multiplier != 1))
    return fail(err, n, "FULLY_CONNECTED: depth %d with spatial fields set", l->depth);
  if (l->op == TFLQ_OP_CONV && l->depth != l->kh * l->kw * l->in_c)
    return fail(err, n, "CONV_2D: depth %d != %d x %d x %d (kernel x input channels)",
                l->depth, l->kh, l->kw, l->in_c);
  if (l->op == TFLQ_OP_DEPTHWISE) {
    if (l->depth != l->kh * l->kw || l->kh * l->kw > 64)
      return fail(err, n, "DEPTHWISE_CONV_2D: depth %d for a %dx%d kernel (at most 64 taps)",
                  l->depth, l->kh, l->kw);
    if (l->in_c * l->depth_multiplier != l->out_channels)
      return fail(err, n, "DEPTHWISE_CONV_2D: %d input channels x multiplier %d != %d outputs",
                  l->in_c, l->depth_multiplier, l->out_channels);
  }
  if (l->stage_channels != 0 &&
      (l->op != TFLQ_OP_CONV || l->stage_channels < 0 || l->stage_channels > l->out_channels ||
       (l->stage_channels % TFLQ_STAGE_UNIT != 0 && l->stage_channels != l->out_channels)))
    return fail(err, n, "%s: %d channels staged at a time (CONV_2D only: a multiple of %d up "
                "to %d, or all)", op, l->stage_channels, TFLQ_STAGE_UNIT, l->out_channels);
  if (l->row_bytes != expected_row_bytes(l->format, l->bits, l->depth))
    return fail(err, n, "%s: %d bytes per weight row, expected %d for %d-bit weights of depth %d",
                op, l->row_bytes, expected_row_bytes(l->format, l->bits, l->depth), l->bits,
                l->depth);
  if (l->act_min > l->act_max || l->act_min < -128 || l->act_max > 127 ||
      l->output_offset < -128 || l->output_offset > 127 || l->input_offset < -127 ||
      l->input_offset > 128)
    return fail(err, n, "%s: activation range [%ld, %ld] or offsets (%ld, %ld) outside int8",
                op, (long)l->act_min, (long)l->act_max, (long)l->input_offset,
                (long)l->output_offset);
  if (l->bias == NULL || l->multiplier == NULL || l->shift == NULL || l->weights == NULL ||
      ((l->format == TFLQ_FMT_PLANES || l->format == TFLQ_FMT_BITSERIAL) && l->affine == NULL) ||
      (l->out_levels != 0 && l->thresholds == NULL) ||
      (l->format == TFLQ_FMT_LUT && l->levels == NULL))
    return fail(err, n, "%s: missing bias, requantization, codebook or weights", op);
  if (l->in_packed < 0 || l->in_packed > 4 || l->out_packed < 0 || l->out_packed > 4)
    return fail(err, n, "%s: packed input / output of %d / %d bits (1..4, 0 for int8)", op,
                l->in_packed, l->out_packed);
  if (l->out_packed && (l->act_max != 127 || l->act_min != 128 - (1 << l->out_packed)))
    return fail(err, n, "%s: %d-bit packed output needs the activation range [%d, 127], not "
                "[%ld, %ld]", op, l->out_packed, 128 - (1 << l->out_packed),
                (long)l->act_min, (long)l->act_max);
  if (l->pool_kh != 0) {
    if (l->op == TFLQ_OP_FC || l->pool_kw < 1 || l->pool_stride_h < 1 || l->pool_stride_w < 1 ||
        l->pool_out_h < 1 || l->pool_out_w < 1 || l->pool_pad_top >= l->pool_kh ||
        l->pool_pad_left >= l->pool_kw ||
        (l->pool_out_h - 1) * l->pool_stride_h - l->pool_pad_top >= l->out_h ||
        (l->pool_out_w - 1) * l->pool_stride_w - l->pool_pad_left >= l->out_w)
      return fail(err, n, "%s: fused %dx%d max-pool (stride %dx%d, padding %d, %d) to %dx%d "
                  "does not fit its %dx%d input", op, l->pool_kh, l->pool_kw, l->pool_stride_h,
                  l->pool_stride_w, l->pool_pad_top, l->pool_pad_left, l->pool_out_h,
                  l->pool_out_w, l->out_h, l->out_w);
  } else if (l->pool_kw || l->pool_stride_h || l->pool_stride_w || l->pool_pad_top ||
             l->pool_pad_left || l->pool_out_h || l->pool_out_w) {
    return fail(err, n, "%s: max-pool fields set without a pool", op);
  }
  for (int c = 0; c < (l->requant_per_channel ? l->out_channels : 1); ++c) {
    if (l->multiplier[c] < 0 || l->shift[c] < -31 || l->shift[c] > 30)
      return fail(err, n, "%s: channel %d requantization (%ld, shift %ld) out of range", op, c,
                  (long)l->multiplier[c], (long)l->shift[c]);
  }
  return 0;
}

/* Bytes of the codebook section, zero-padded to 4 (0 for int8 rows or a bad width). */
static size_t codebook_bytes(const tflq_layer_t* l) {
  const size_t books = l->per_channel_codebook ? (size_t)l->out_channels : 1;
  size_t codebook = 0;
  if (l->format == TFLQ_FMT_PLANES || l->format == TFLQ_FMT_BITSERIAL) codebook = 4 * books;
  if (l->format == TFLQ_FMT_LUT && l->bits >= 1 && l->bits <= 4)
    codebook = ((size_t)1 << l->bits) * books;
  return (codebook + 3) & ~(size_t)3;
}

/* Bytes of the output thresholds (0 without them, or for an activation range they
 * cannot describe: the check refuses those). */
static size_t threshold_bytes(const tflq_layer_t* l) {
  if (l->out_levels < 2 || l->out_levels > 4) return 0;
  return 4 * (size_t)l->out_channels * (size_t)(l->out_levels - 1);
}

void tflq_layer_decode(const uint8_t* b, tflq_layer_t* l) {
  l->op = b[4];
  l->format = b[5];
  l->bits = b[6];
  l->per_channel_codebook = b[7] & 1;
  l->in_bits = l->format == TFLQ_FMT_BITSERIAL ? (b[7] >> 1) & 7 : 0;
  l->out_channels = (int)u16(b + 8);
  l->depth = (int)u16(b + 10);
  l->in_h = (int)u16(b + 12);
  l->in_w = (int)u16(b + 14);
  l->in_c = (int)u16(b + 16);
  l->out_h = (int)u16(b + 18);
  l->out_w = (int)u16(b + 20);
  l->depth_multiplier = (int)u16(b + 22);
  l->kh = b[24];
  l->kw = b[25];
  l->stride_h = b[26];
  l->stride_w = b[27];
  l->dilation_h = b[28];
  l->dilation_w = b[29];
  l->pad_top = b[30];
  l->pad_left = b[31];
  l->input_offset = (int32_t)u32(b + 32);
  l->output_offset = (int32_t)u32(b + 36);
  l->act_min = (int32_t)u32(b + 40);
  l->act_max = (int32_t)u32(b + 44);
  l->row_bytes = (int)u32(b + 48);
  l->int8_groups = l->format == TFLQ_FMT_INT8 && l->op != TFLQ_OP_DEPTHWISE;
  l->in_packed = b[56];
  l->out_packed = b[57];
  l->pool_kh = b[58];
  l->pool_kw = b[59];
  l->pool_stride_h = b[60];
  l->pool_stride_w = b[61];
  l->pool_pad_top = b[62];
  l->pool_pad_left = b[63];
  l->pool_out_h = (int)u16(b + 64);
  l->pool_out_w = (int)u16(b + 66);
  const size_t channels = (size_t)l->out_channels;
  const uint8_t* p = b + TFLQ_HEADER_BYTES;
  l->bias = (const int32_t*)p;
  l->multiplier = (const int32_t*)(p + 4 * channels);
  l->shift = (const int32_t*)(p + 8 * channels);
  l->requant_per_channel = 1;
  p += 12 * channels;
  l->affine = l->format == TFLQ_FMT_PLANES || l->format == TFLQ_FMT_BITSERIAL
                  ? (const int16_t*)p : NULL;
  l->levels = l->format == TFLQ_FMT_LUT ? (const int8_t*)p : NULL;
  p += codebook_bytes(l);
  l->out_levels = 0;
  l->thresholds = NULL;
  if (l->format == TFLQ_FMT_BITSERIAL && (b[7] & 0x10)) {
    l->out_levels = (int)(l->act_max - l->act_min) + 1;
    l->thresholds = (const int32_t*)p;
    p += threshold_bytes(l);
  }
  l->weights = p;
  l->stage_channels = 0;
}

int tflq_layer_stage(tflq_layer_t* l, int channels, char* err, size_t n) {
  l->stage_channels = channels;
  return tflq_layer_check(l, err, n);
}

int tflq_layer_parse(const uint8_t* b, size_t length, tflq_layer_t* l, char* err, size_t n) {
  memset(l, 0, sizeof(*l));
  if (b == NULL || length < TFLQ_HEADER_BYTES)
    return fail(err, n, "packed weights: %u bytes, less than the %d-byte header",
                (unsigned)length, TFLQ_HEADER_BYTES);
  if (((uintptr_t)b & 3u) != 0)
    return fail(err, n, "packed weights are not 4-byte aligned (address %p)", (const void*)b);
  if (memcmp(b, "TQP2", 4) != 0)
    return fail(err, n, "packed weights: bad magic (not a tflq TQP2 blob)");
  tflq_layer_decode(b, l);
  if (check_kind(l, err, n) != 0) return -1;
  const uint32_t total = u32(b + 52);
  if (total != length)
    return fail(err, n, "packed weights: header says %lu bytes, the tensor holds %lu",
                (unsigned long)total, (unsigned long)length);
  if (l->row_bytes != expected_row_bytes(l->format, l->bits, l->depth))
    return fail(err, n, "packed weights: %d bytes per weight row, expected %d for %d-bit "
                "weights of depth %d", l->row_bytes,
                expected_row_bytes(l->format, l->bits, l->depth), l->bits, l->depth);
  const size_t channels = (size_t)l->out_channels;
  const size_t codebook = codebook_bytes(l) + threshold_bytes(l);
  const size_t expected =
      TFLQ_HEADER_BYTES + 12 * channels + codebook + channels * (size_t)l->row_bytes;
  if (expected != length)
    return fail(err, n,
                "packed weights: %lu bytes, but %lu channels x %d-byte rows with a %lu-byte "
                "codebook need %lu",
                (unsigned long)length, (unsigned long)channels, l->row_bytes,
                (unsigned long)codebook, (unsigned long)expected);
  if (l->format == TFLQ_FMT_INT8 && l->per_channel_codebook)
    return fail(err, n, "packed weights: int8 rows with a codebook flag");
  if ((b[7] & ~(TFLQ_FLAG_IN_RAM | (l->format == TFLQ_FMT_BITSERIAL ? 0x1f : 0x01))) != 0)
    return fail(err, n, "packed weights: unknown flags 0x%02x for format %d", b[7], l->format);
  if (l->format == TFLQ_FMT_BITSERIAL && (b[7] & 0x10) && threshold_bytes(l) == 0)
    return fail(err, n, "packed weights: output thresholds for the activation range [%ld, %ld]",
                (long)l->act_min, (long)l->act_max);
  return tflq_layer_check(l, err, n);
}
