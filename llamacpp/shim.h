// Small C interface over llama.cpp for the Go package. Every function
// catches C++ exceptions and reports them as an error message, so that no
// exception crosses into Go (which would abort the process).
#ifndef GGUFPRUNE_SHIM_H
#define GGUFPRUNE_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GP_ERRLEN 512

// GP_EXIT_CRASH is the exit status of the process when llama.cpp aborts or
// faults on a value that slipped past the checks.
#define GP_EXIT_CRASH 3
#define GP_EXIT_BADINPUT 1 // a mapped model file shrank while in use (SIGBUS)

typedef struct gp_ctx gp_ctx;

void gp_init(void);
// Temporary files to unlink if the process dies inside llama.cpp: add
// returns a slot (-1 when full), remove frees it.
int gp_pending_add(const char *path);
void gp_pending_remove(int slot);
// gp_test_crash aborts (0), divides by zero (1) or terminates (2): for tests.
int gp_test_crash(int kind);
// gp_set_log says whether llama.cpp's log lines go to Go (goLog) or nowhere.
void gp_set_log(bool forward);
// gp_load_backends loads ggml's dynamic backends (GPU builds) from dir and
// GGML_BACKEND_PATH, and returns how many GPU devices there then are.
int gp_load_backends(const char *dir);

int gp_model_load(const char *path, int n_gpu_layers, bool use_mmap, bool vocab_only, struct llama_model **out, char *err);
void gp_model_free(struct llama_model *model);

// gp_tokenize writes at most n_max tokens and the count needed to *n_out;
// a count larger than n_max means "call again with a larger buffer".
int gp_tokenize(const struct llama_model *model, const char *text, int32_t text_len, bool add_special,
                int32_t *tokens, int32_t n_max, int32_t *n_out, char *err);

// gp_ctx_new makes a context whose n_ctx, n_batch and n_ubatch are all n_ctx,
// so one decode computes one graph. With capture, an eval callback hands the
// block-boundary hidden states (and, with imatrix, matmul inputs) to Go.
// GP_CAPTURE_FAILED is gp_decode's status when the graph's block
// boundaries could not be captured, skipped or stopped at (err says why).
#define GP_CAPTURE_FAILED (-2)

int gp_ctx_new(struct llama_model *model, int32_t n_ctx, int32_t n_threads, bool capture, uintptr_t handle,
               gp_ctx **out, char *err);
void gp_ctx_free(gp_ctx *c);
void gp_ctx_set_capture(gp_ctx *c, bool hidden, bool imatrix);
// gp_ctx_set_skip makes the following decodes skip the given blocks (of
// n_run): each one's output is replaced by its input.
void gp_ctx_set_skip(gp_ctx *c, const int32_t *blocks, int32_t n, int32_t n_run);
// gp_ctx_set_stop ends each decode's graph after block after_block's output
// (-1: after the embeddings; -2: never).
void gp_ctx_set_stop(gp_ctx *c, int32_t after_block);
// gp_ctx_set_experts hands, in the following decodes, the routing of every
// mixture-of-experts block to Go (goExperts): per token the experts chosen,
// their gate weights and the L2 norms of their outputs.
void gp_ctx_set_experts(gp_ctx *c, bool on);
// gp_ctx_set_boundaries names the graph's embeddings and block outputs
// (block_out-N) for capture, skipping and stopping; the defaults are
// "inp_embd" and "l_out".
int gp_ctx_set_boundaries(gp_ctx *c, const char *embd, const char *block_out, char *err);
// gp_ctx_set_watch hands the graph tensors of these names to Go (goWatched)
// in the following decodes; Go may change them.
void gp_ctx_set_watch(gp_ctx *c, const char *const *names, int32_t n);
// gp_dequantize converts n values of a ggml type to float; gp_quantize_rows
// quantizes nrows rows of n_per_row floats with ggml's own quantizer (an
// importance matrix of n_per_row values, or NULL).
int gp_dequantize(int32_t type, const void *src, float *dst, int64_t n, char *err);
int gp_quantize_rows(int32_t type, const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                     size_t *written, char *err);

// gp_decode clears nothing: it decodes n tokens at positions pos..pos+n-1 of
// sequence 0, asking for logits from index logits_from on.
int gp_decode(gp_ctx *c, const int32_t *tokens, int32_t n, int32_t pos, int32_t logits_from, char *err);
void gp_memory_clear(gp_ctx *c);
const float *gp_logits(gp_ctx *c, int32_t i);

// With override_type >= 0 every quantized tensor that needs no fallback gets
// that ggml type (llama.cpp's per-tensor type overrides).
int gp_quantize(const char *in, const char *out, int32_t ftype, int32_t n_threads, bool only_copy, int32_t override_type,
                const char *const *imatrix_names, const float *const *imatrix_values,
                const int64_t *imatrix_lens, int32_t n_imatrix, char *err);

// gp_gguf_read opens a file with ggml's own GGUF reader (the one llama.cpp
// reads models and importance matrices with) and reports what it found.
int gp_gguf_read(const char *path, int64_t *n_tensors, int64_t *n_kv, char *general_type, size_t type_len, char *err);

int32_t gp_type_size(int32_t type, int64_t *block_size, char *name, size_t name_len);

#ifdef __cplusplus
}
#endif

#endif
