/*
 * The part of QEMU's TCG plugin interface that flash_reads.c calls, declared here
 * because Debian 12 ships qemu-system-misc 7.2 without its plugin header. These are
 * the entry points qemu-system-riscv32 7.2 exports (`nm -D` lists them) at plugin
 * API version 1; QEMU documents them in docs/devel/tcg-plugins.rst.
 */
#ifndef TFLQ_QEMU_PLUGIN_ABI_H_
#define TFLQ_QEMU_PLUGIN_ABI_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TFLQ_QEMU_PLUGIN_API 1

typedef uint64_t tflq_plugin_id;
typedef uint32_t tflq_meminfo;
struct qemu_plugin_tb;
struct qemu_plugin_insn;

/* What QEMU passes to qemu_plugin_install (only its layout matters here). */
typedef struct {
  const char *target_name;
  struct { int min, cur; } version;
  bool system_emulation;
  union { struct { int smp_vcpus, max_vcpus; } system; };
} tflq_qemu_info;

enum { TFLQ_CB_NO_REGS = 0 };
enum { TFLQ_MEM_R = 1, TFLQ_MEM_W = 2, TFLQ_MEM_RW = 3 };

typedef void (*tflq_tb_trans_cb)(tflq_plugin_id id, struct qemu_plugin_tb *tb);
typedef void (*tflq_insn_cb)(unsigned int vcpu, void *userdata);
typedef void (*tflq_mem_cb)(unsigned int vcpu, tflq_meminfo info, uint64_t vaddr,
                            void *userdata);
typedef void (*tflq_exit_cb)(tflq_plugin_id id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(tflq_plugin_id id, tflq_tb_trans_cb cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t i);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, tflq_insn_cb cb,
                                            int flags, void *userdata);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn, tflq_mem_cb cb,
                                      int flags, int rw, void *userdata);
unsigned int qemu_plugin_mem_size_shift(tflq_meminfo info);
bool qemu_plugin_mem_is_store(tflq_meminfo info);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
typedef void (*tflq_tb_exec_cb)(unsigned int vcpu, void *userdata);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, tflq_tb_exec_cb cb,
                                          int flags, void *userdata);
void qemu_plugin_register_atexit_cb(tflq_plugin_id id, tflq_exit_cb cb, void *userdata);

#endif
