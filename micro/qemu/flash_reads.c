/*
 * QEMU TCG plugin: the data loads a firmware makes from the FE310's SPI flash, per
 * measurement window, as the flash controller would serve them.
 *
 *   qemu-system-riscv32 -M sifive_e ... -plugin flash_reads.so,out=FILE[,lo=A,hi=B]
 *
 * A window opens at `csrwi mscratch, 1` and closes at `csrwi mscratch, 0`
 * (micro/fe310/perf.h: TFLQ_FLASH_WINDOW); the immediate sits in the instruction, so
 * the plugin reads no registers. At each close it appends one line to FILE:
 *
 *   window=K loads=N bytes=N seq_bytes=N nonseq_loads=N
 *
 * The model of the controller (sifive-blocks TLSPIFlash.scala; FE310 facts doc): it
 * serves one byte per request and skips command and address only when the byte asked
 * for follows the last one it served. So a load whose first byte is the byte after the
 * previous flash load's last one is *sequential* (all its bytes counted in seq_bytes);
 * any other is *non-sequential* (one nonseq_loads). Instruction fetches go through the
 * I-cache and are not data loads: they are not counted, and their refills (which would
 * also break a sequential run on silicon) are not modelled.
 *
 * With profile=FILE it also writes, at exit, where the windows' instructions went: one
 * line per translation block start, summed over all windows,
 *
 *   pc=0xADDR instructions=N
 *
 * (benchmarks/_firmware.py maps them to the ELF's functions).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_abi.h"

#define EXPORT __attribute__((visibility("default")))

EXPORT int qemu_plugin_version = TFLQ_QEMU_PLUGIN_API;

/* csrrwi x0, mscratch (0x340), uimm: everything but the 5-bit immediate. */
#define CSRWI_MSCRATCH 0x34005073u
#define CSRWI_UIMM_MASK (0x1Fu << 15)

typedef struct {
  uint64_t loads, bytes, seq_bytes, nonseq_loads;
} Counts;

static uint64_t flash_lo = 0x20000000u, flash_hi = 0x40000000u;
static FILE *out;
static int window_open;
static uint64_t windows;
static Counts counts;
static uint64_t next_byte = UINT64_MAX;  /* the byte the controller would stream next */

/* profile=FILE: instructions executed in windows, per translated block (a block
 * translated again gets a record of its own; the lines are summed by pc at exit). */
typedef struct Block {
  uint64_t pc, insns, instructions;
  struct Block *next;
} Block;
static FILE *profile;
static Block *blocks;

static void on_block(unsigned int vcpu, void *userdata) {
  (void)vcpu;
  Block *b = userdata;
  if (window_open) b->instructions += b->insns;
}

static void on_load(unsigned int vcpu, tflq_meminfo info, uint64_t vaddr, void *userdata) {
  (void)vcpu;
  (void)userdata;
  if (qemu_plugin_mem_is_store(info) || vaddr < flash_lo || vaddr >= flash_hi) return;
  const uint64_t size = 1u << qemu_plugin_mem_size_shift(info);
  if (window_open) {
    counts.loads++;
    counts.bytes += size;
    if (vaddr == next_byte) {
      counts.seq_bytes += size;
    } else {
      counts.nonseq_loads++;
    }
  }
  next_byte = vaddr + size;
}

static void on_window(unsigned int vcpu, void *userdata) {
  (void)vcpu;
  const int open = userdata != NULL;
  if (open && !window_open) {
    memset(&counts, 0, sizeof counts);
  } else if (!open && window_open) {
    fprintf(out, "window=%" PRIu64 " loads=%" PRIu64 " bytes=%" PRIu64 " seq_bytes=%" PRIu64
            " nonseq_loads=%" PRIu64 "\n", windows++, counts.loads, counts.bytes,
            counts.seq_bytes, counts.nonseq_loads);
    fflush(out);
  }
  window_open = open;
}

static void on_translate(tflq_plugin_id id, struct qemu_plugin_tb *tb) {
  (void)id;
  const size_t n = qemu_plugin_tb_n_insns(tb);
  if (profile) {
    Block *b = calloc(1, sizeof *b);
    if (b) {
      b->pc = qemu_plugin_tb_vaddr(tb);
      b->insns = n;
      b->next = blocks;
      blocks = b;
      qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, TFLQ_CB_NO_REGS, b);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    if (qemu_plugin_insn_size(insn) == 4) {
      uint32_t word;
      memcpy(&word, qemu_plugin_insn_data(insn), sizeof word);
      if ((word & ~CSRWI_UIMM_MASK) == CSRWI_MSCRATCH) {
        const uintptr_t open = (word & CSRWI_UIMM_MASK) != 0;
        qemu_plugin_register_vcpu_insn_exec_cb(insn, on_window, TFLQ_CB_NO_REGS, (void *)open);
      }
    }
    /* Both directions: qemu-system-riscv32 7.2 calls a TFLQ_MEM_R callback on stores
     * only (tried); on_load drops the stores. */
    qemu_plugin_register_vcpu_mem_cb(insn, on_load, TFLQ_CB_NO_REGS, TFLQ_MEM_RW, NULL);
  }
}

static void on_qemu_exit(tflq_plugin_id id, void *userdata) {
  (void)id;
  (void)userdata;
  if (out) fclose(out);
  out = NULL;
  for (Block *b = blocks; b; b = b->next)
    if (b->instructions) fprintf(profile, "pc=0x%" PRIx64 " instructions=%" PRIu64 "\n", b->pc,
                                 b->instructions);
  if (profile) fclose(profile);
  profile = NULL;
}

static int parse_address(const char *text, uint64_t *value) {
  char *end;
  *value = strtoull(text, &end, 0);
  return *text != '\0' && *end == '\0';
}

EXPORT int qemu_plugin_install(tflq_plugin_id id, const tflq_qemu_info *info, int argc,
                               char **argv) {
  (void)info;
  const char *path = NULL;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "out=", 4) == 0) {
      path = argv[i] + 4;
    } else if (strncmp(argv[i], "profile=", 8) == 0) {
      if ((profile = fopen(argv[i] + 8, "w")) == NULL) {
        fprintf(stderr, "flash_reads: cannot write profile '%s'\n", argv[i] + 8);
        return 1;
      }
    } else if (strncmp(argv[i], "lo=", 3) == 0 && parse_address(argv[i] + 3, &flash_lo)) {
    } else if (strncmp(argv[i], "hi=", 3) == 0 && parse_address(argv[i] + 3, &flash_hi)) {
    } else {
      fprintf(stderr, "flash_reads: unknown or malformed argument '%s'\n", argv[i]);
      return 1;
    }
  }
  if (path == NULL || (out = fopen(path, "w")) == NULL) {
    fprintf(stderr, "flash_reads: needs out=FILE, a file it can write\n");
    return 1;
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
  return 0;
}
