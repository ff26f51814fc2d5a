#include "shim.h"

#include <algorithm>
#include <cmath>
#include <atomic>
#include <csignal>
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <string>
#include <unordered_map>
#include <vector>

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"
#include "gguf.h"

#include "_cgo_export.h"

struct gp_ctx {
    struct llama_context *ctx;
    // A persistent CPU thread pool. Without one, ggml starts and joins its
    // threads for every graph computation, and capture computes each decode
    // as one graph piece per block: measured 0.86 of plain decoding speed
    // without the pool, 0.92-0.95 with it, plain decoding unchanged.
    struct ggml_threadpool *threads;
    const struct llama_model *model;
    uintptr_t handle;
    int32_t n_embd;
    bool want_hidden;
    bool want_imatrix;
    // Expert routing (gp_ctx_set_experts): per MoE block, the experts each
    // token is routed to, their gate weights and the L2 norms of their
    // outputs, handed to Go at the block's ffn_moe_out.
    bool want_experts = false;
    std::vector<int32_t> exp_ids;   // [n_tokens][n_used], from ffn_moe_argsort
    std::vector<float> exp_weights; // [n_tokens][n_used], the last ffn_moe_weights* tensor
    std::vector<float> exp_norms;   // [n_tokens][n_used], of ffn_moe_down (or _biased)
    int32_t exp_n_expert = 0;
    std::vector<float> buf;
    std::string cb_error;
    // Run-time block skipping: a skipped block's output is replaced by its
    // input, kept from the boundary before (the graph may reuse its memory).
    std::vector<char> skip;
    bool skip_any = false;
    int32_t n_run = 0;          // block boundaries a decode has: n_run + 1
    int32_t seen = 0;           // boundaries seen in the current decode
    int32_t stop_after = -2;    // stop the graph after this block's output (-2: never)
    std::vector<float> prev;    // the last boundary kept for skipping
    int64_t prev_rows = 0;
    // Graph tensors handed to Go by name (goWatched), which may change them.
    std::unordered_map<std::string, int> watch;
    // The names of the embeddings and of block outputs, before "-N" (see
    // gp_ctx_set_boundaries).
    std::string embd = "inp_embd";
    std::string block_out = "l_out-";
};

static void set_err(char *err, const char *msg) {
    snprintf(err, GP_ERRLEN, "%s", msg);
}

// GUARD runs body and turns any C++ exception into an error return.
#define GUARD(err, ...)                                                    \
    try {                                                                  \
        __VA_ARGS__                                                        \
    } catch (const std::exception &e) {                                    \
        snprintf(err, GP_ERRLEN, "llama.cpp threw %s", e.what());          \
        return -1;                                                         \
    } catch (...) {                                                        \
        set_err(err, "llama.cpp threw an unknown C++ exception");          \
        return -1;                                                         \
    }

static std::atomic<bool> g_forward{false};

// The errors llama.cpp logged on this thread during the current call, so
// that a failure says why (a missing tensor, a wrong shape, a key of the
// wrong type) without -v: llama.cpp logs the reason, then returns nullptr.
static thread_local std::string g_errors;
static thread_local bool g_in_error = false;

static void gp_log(enum ggml_log_level level, const char *text, void *) {
    bool keep = level == GGML_LOG_LEVEL_ERROR || (level == GGML_LOG_LEVEL_CONT && g_in_error);
    g_in_error = keep;
    if (keep && g_errors.size() < 2048) {
        g_errors += text;
    }
    if (g_forward) {
        goLog((int)level, (char *)text);
    }
}

// clear_errors forgets the errors logged before a call.
static void clear_errors() {
    g_errors.clear();
    g_in_error = false;
}

// set_err_logged writes what failed with the errors llama.cpp logged, one
// line each without the function that logged it, joined by "; " (or the
// hint to run with -v when it logged none).
static void set_err_logged(char *err, const char *what) {
    std::string why;
    size_t start = 0;
    while (start < g_errors.size()) {
        size_t end = g_errors.find('\n', start);
        if (end == std::string::npos) {
            end = g_errors.size();
        }
        std::string line = g_errors.substr(start, end - start);
        start = end + 1;
        size_t colon = line.find(": ");
        if (colon != std::string::npos && line.find_first_of(" \t") > colon) {
            line = line.substr(colon + 2); // "llama_model_load: error …" → "error …"
        }
        while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) {
            line.pop_back();
        }
        if (!line.empty()) {
            why += (why.empty() ? "" : "; ") + line;
        }
    }
    if (why.empty()) {
        snprintf(err, GP_ERRLEN, "%s (run with -v for its log)", what);
    } else {
        snprintf(err, GP_ERRLEN, "%s: %s", what, why.c_str());
    }
}

// Crashes inside llama.cpp. ggml aborts through ggml_abort, which first calls
// the abort callback: Go then removes its temporary files, says what
// happened and exits with status 3 (goAbort). A division by zero in C (Go code
// never raises SIGFPE: it checks divisions itself) or an abort that bypasses
// ggml_abort (std::terminate) arrives as a signal: the handler removes the
// temporary files registered below with unlink (async-signal-safe), writes a
// line and exits with status 3 too, so that a crash never looks like success
// (0), a failure we report (1) or a usage error (2).
#define GP_MAX_PENDING 64
#define GP_PATH_MAX 4096
static char g_pending[GP_MAX_PENDING][GP_PATH_MAX];
static std::atomic<bool> g_pending_used[GP_MAX_PENDING];

int gp_pending_add(const char *path) {
    if (strlen(path) >= GP_PATH_MAX) {
        return -1;
    }
    for (int i = 0; i < GP_MAX_PENDING; i++) {
        if (!g_pending_used[i].load() && g_pending[i][0] == '\0') {
            snprintf(g_pending[i], GP_PATH_MAX, "%s", path);
            g_pending_used[i].store(true);
            return i;
        }
    }
    return -1;
}

void gp_pending_remove(int slot) {
    if (slot >= 0 && slot < GP_MAX_PENDING) {
        g_pending_used[slot].store(false);
        g_pending[slot][0] = '\0';
    }
}

static void write_str(const char *s) {
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

static void crash_handler(int sig) {
    for (int i = 0; i < GP_MAX_PENDING; i++) {
        if (g_pending_used[i].load()) {
            unlink(g_pending[i]);
        }
    }
    if (sig == SIGBUS) {
        // A mapped file shrank under us: another program truncated or
        // replaced the model while llama.cpp read it through mmap. That is
        // bad input, not a crash of llama.cpp.
        write_str("ggufprune: a model file changed while it was in use: it was truncated or replaced while llama.cpp read it "
                  "through a memory map (SIGBUS); nothing was written. Copy models before pruning them, or give --no-mmap "
                  "to read the model into memory first\n");
        _exit(GP_EXIT_BADINPUT);
    }
    write_str(sig == SIGFPE ? "ggufprune: llama.cpp crashed: arithmetic fault (SIGFPE) on a value of the model it does not check\n"
                            : "ggufprune: llama.cpp aborted (SIGABRT)\n");
    write_str("ggufprune: this is a bug of ggufprune's checks: please report it with the file's metadata (ggufprune inspect)\n");
    _exit(GP_EXIT_CRASH);
}

static void abort_callback(const char *msg) { goAbort((char *)msg); }

void gp_init(void) {
    ggml_set_abort_callback(abort_callback);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = crash_handler;
    sa.sa_flags = SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGFPE, &sa, nullptr);
    sigaction(SIGABRT, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
#ifdef __GLIBC__
    // Model weights read without mmap, KV caches and compute buffers are large
    // allocations. glibc raises its mmap threshold after the first of them is
    // freed and serves the next from fragmented heap arenas, so a process that
    // loads and frees models keeps growing. A fixed threshold sends them to
    // mmap, and freeing them gives the memory back.
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
    llama_log_set(gp_log, nullptr);
    llama_backend_init();
}

void gp_set_log(bool forward) { g_forward = forward; }

int gp_load_backends(const char *dir) {
    try {
        ggml_backend_load_all_from_path(dir);
        int gpus = 0;
        for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
            enum ggml_backend_dev_type t = ggml_backend_dev_type(ggml_backend_dev_get(i));
            if (t == GGML_BACKEND_DEVICE_TYPE_GPU || t == GGML_BACKEND_DEVICE_TYPE_IGPU) {
                gpus++;
            }
        }
        return gpus;
    } catch (...) {
        return 0;
    }
}

int gp_model_load(const char *path, int n_gpu_layers, bool use_mmap, bool vocab_only, struct llama_model **out, char *err) {
    GUARD(err, {
        llama_model_params p = llama_model_default_params();
        p.n_gpu_layers = n_gpu_layers;
        p.use_mmap = use_mmap;
        p.vocab_only = vocab_only;
        clear_errors();
        *out = llama_model_load_from_file(path, p);
        if (*out == nullptr) {
            set_err_logged(err, "llama.cpp could not load the model");
            return -1;
        }
        return 0;
    })
}

void gp_model_free(struct llama_model *model) {
    try {
        llama_model_free(model);
    } catch (...) {
    }
}

int gp_tokenize(const struct llama_model *model, const char *text, int32_t text_len, bool add_special,
                int32_t *tokens, int32_t n_max, int32_t *n_out, char *err) {
    GUARD(err, {
        const llama_vocab *vocab = llama_model_get_vocab(model);
        int32_t n = llama_tokenize(vocab, text, text_len, tokens, n_max, add_special, false);
        if (n == INT32_MIN) {
            set_err(err, "text is too long to tokenize");
            return -1;
        }
        *n_out = n < 0 ? -n : n;
        return 0;
    })
}

// Block boundaries: "inp_embd" (the input of block 0) and "l_out-N".
enum { NOT_A_BOUNDARY = -2, EMBD_BOUNDARY = -1 };

// block_of reads "l_out-N" (N >= 0) or "inp_embd", or the architecture's
// names for them; other names give NOT_A_BOUNDARY.
// Go receives inp_embd as a flag, not as a number: the numbering of
// boundaries is defined once, in Go (bi.EmbeddingBoundary).
static int block_of(const gp_ctx *c, const char *name) {
    if (c->embd == name) {
        return EMBD_BOUNDARY;
    }
    const size_t k = c->block_out.size();
    if (strncmp(name, c->block_out.c_str(), k) == 0) {
        char *end = nullptr;
        long n = strtol(name + k, &end, 10);
        if (end != name + k && *end == '\0' && n >= 0) {
            return (int)n;
        }
    }
    return NOT_A_BOUNDARY;
}

// host_data returns the n floats of a contiguous F32 tensor: in place when its
// buffer is in host memory (the CPU backend), else copied from the device.
static float *host_data(gp_ctx *c, const struct ggml_tensor *t, size_t n) {
    if (t->buffer != nullptr && ggml_backend_buffer_is_host(t->buffer)) {
        return (float *)t->data;
    }
    if (c->buf.size() < n) {
        c->buf.resize(n);
    }
    ggml_backend_tensor_get(t, c->buf.data(), 0, n * sizeof(float));
    return c->buf.data();
}

// The graph tensors of llama.cpp's mixture-of-experts FFN that expert
// scoring reads (llama-graph.cpp build_moe_ffn, which names them
// "NAME-il"): the argsort whose first n_expert_used entries per token are
// the experts chosen (ffn_moe_topk is a strided view of it), the gate
// weights in the order they are refined (ffn_moe_weights, then _softmax,
// _norm, _scaled when the model has them: the last one is what multiplies
// the expert outputs), the expert outputs (ffn_moe_down, then _biased when
// the experts have biases), and the block's mixture output, where the
// block's routing is complete.
enum { EXP_NONE, EXP_ARGSORT, EXP_WEIGHTS, EXP_DOWN, EXP_OUT };

static bool has_prefix(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

static int layer_of(const char *name);

static int expert_part_of(const char *name) {
    // Exactly "NAME-N": not the views ggml names "NAME-N (view)".
    if (!has_prefix(name, "ffn_moe_") || layer_of(name) < 0) {
        return EXP_NONE;
    }
    const char *rest = name + strlen("ffn_moe_");
    if (has_prefix(rest, "argsort-")) {
        return EXP_ARGSORT;
    }
    if (has_prefix(rest, "weights-") || has_prefix(rest, "weights_softmax-") || has_prefix(rest, "weights_norm-") ||
        has_prefix(rest, "weights_scaled-")) {
        return EXP_WEIGHTS;
    }
    if (has_prefix(rest, "down-") || has_prefix(rest, "down_biased-")) {
        return EXP_DOWN;
    }
    if (has_prefix(rest, "out-")) {
        return EXP_OUT;
    }
    return EXP_NONE;
}

// layer_of reads N of "NAME-N" (-1 when there is none).
static int layer_of(const char *name) {
    const char *dash = strrchr(name, '-');
    if (dash == nullptr || dash[1] == '\0') {
        return -1;
    }
    char *end = nullptr;
    long n = strtol(dash + 1, &end, 10);
    return (*end == '\0' && n >= 0) ? (int)n : -1;
}

// take_expert_part keeps what expert scoring needs of one graph tensor, and
// hands a block's routing to Go at its mixture output. Strided tensors are
// read through their strides (nb), as llama.cpp's imatrix tool reads ids.
static bool take_expert_part(gp_ctx *c, const struct ggml_tensor *t, int part) {
    std::string name = t->name;
    switch (part) {
    case EXP_ARGSORT: {
        if (t->type != GGML_TYPE_I32 || !ggml_is_contiguous(t)) {
            c->cb_error = "graph tensor " + name + " is not a contiguous I32 tensor";
            return false;
        }
        c->exp_n_expert = (int32_t)t->ne[0];
        c->exp_ids.resize((size_t)ggml_nelements(t));
        ggml_backend_tensor_get(t, c->exp_ids.data(), 0, ggml_nbytes(t));
        c->exp_weights.clear();
        c->exp_norms.clear();
        return true;
    }
    case EXP_WEIGHTS: {
        if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t)) {
            c->cb_error = "graph tensor " + name + " is not a contiguous F32 tensor";
            return false;
        }
        size_t n = (size_t)ggml_nelements(t);
        c->exp_weights.resize(n);
        ggml_backend_tensor_get(t, c->exp_weights.data(), 0, n * sizeof(float));
        return true;
    }
    case EXP_DOWN: {
        // [n_embd, n_used, n_tokens]
        if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t) || t->ne[3] != 1) {
            c->cb_error = "graph tensor " + name + " is not a contiguous F32 [n_embd, n_used, n_tokens] tensor";
            return false;
        }
        size_t n = (size_t)ggml_nelements(t);
        const float *x = host_data(c, t, n);
        const int64_t d = t->ne[0], rows = t->ne[1] * t->ne[2];
        c->exp_norms.resize((size_t)rows);
        for (int64_t r = 0; r < rows; r++) {
            double ss = 0;
            const float *v = x + r * d;
            for (int64_t i = 0; i < d; i++) {
                ss += (double)v[i] * (double)v[i];
            }
            c->exp_norms[(size_t)r] = (float)sqrt(ss);
        }
        return true;
    }
    case EXP_OUT: {
        const int64_t n_tokens = t->ne[1];
        const int block = layer_of(t->name);
        if (c->exp_norms.empty()) {
            // Some models name the mixture output again after
            // build_moe_ffn (qwen2moe): the routing was handed already.
            return true;
        }
        if (block < 0 || n_tokens <= 0 || c->exp_n_expert <= 0) {
            c->cb_error = "graph tensor " + name + " came without the routing before it (ffn_moe_argsort, ffn_moe_down)";
            return false;
        }
        const int64_t n_used = (int64_t)c->exp_norms.size() / n_tokens;
        if (n_used <= 0 || n_used * n_tokens != (int64_t)c->exp_norms.size() ||
            (int64_t)c->exp_weights.size() != n_used * n_tokens ||
            (int64_t)c->exp_ids.size() != (int64_t)c->exp_n_expert * n_tokens || n_used > c->exp_n_expert) {
            c->cb_error = "the routing tensors before " + name + " do not agree in size";
            return false;
        }
        std::vector<int32_t> ids((size_t)(n_used * n_tokens));
        for (int64_t tok = 0; tok < n_tokens; tok++) {
            for (int64_t k = 0; k < n_used; k++) {
                ids[(size_t)(tok * n_used + k)] = c->exp_ids[(size_t)(tok * c->exp_n_expert + k)];
            }
        }
        goExperts(c->handle, block, ids.data(), c->exp_weights.data(), c->exp_norms.data(), (int)n_used, (int)n_tokens,
                  (int)c->exp_n_expert);
        c->exp_norms.clear();
        return true;
    }
    }
    return true;
}

// eval_cb is ggml's scheduler callback: asked about every graph node, it
// requests only the block boundaries (and matmuls when an imatrix is
// collected), then copies each requested tensor and hands it to Go.
static bool eval_cb(struct ggml_tensor *t, bool ask, void *user_data) {
    gp_ctx *c = (gp_ctx *)user_data;
    bool is_matmul = c->want_imatrix && (t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_MUL_MAT_ID);
    bool boundaries = c->want_hidden || c->skip_any || c->stop_after != -2;
    int block = boundaries ? block_of(c, t->name) : NOT_A_BOUNDARY;
    bool watched = !c->watch.empty() && c->watch.count(t->name) > 0;
    int expert_part = c->want_experts ? expert_part_of(t->name) : EXP_NONE;
    if (ask) {
        return block != NOT_A_BOUNDARY || is_matmul || watched || expert_part != EXP_NONE;
    }
    if (!c->cb_error.empty()) {
        return false;
    }
    if (expert_part != EXP_NONE && !take_expert_part(c, t, expert_part)) {
        return false;
    }
    if (watched && t->type == GGML_TYPE_I32 && ggml_is_contiguous(t)) {
        // Indices (such as ffn_moe_argsort, the experts each token is
        // routed to) are handed over as floats, exact below 2^24; what Go
        // changes in them is not written back.
        size_t n = (size_t)ggml_nelements(t);
        std::vector<int32_t> ids(n);
        ggml_backend_tensor_get(t, ids.data(), 0, n * sizeof(int32_t));
        std::vector<float> data(ids.begin(), ids.end());
        goWatched(c->handle, (char *)t->name, data.data(), (int)t->ne[0], (int)(n / t->ne[0]));
        watched = false;
    }
    if (watched) {
        if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t)) {
            c->cb_error = std::string("graph tensor ") + t->name + " is not a contiguous F32 or I32 tensor";
            return false;
        }
        size_t n = (size_t)ggml_nelements(t);
        bool host = t->buffer != nullptr && ggml_backend_buffer_is_host(t->buffer);
        float *data = host_data(c, t, n);
        goWatched(c->handle, (char *)t->name, data, (int)t->ne[0], (int)(n / t->ne[0]));
        if (!host) {
            ggml_backend_tensor_set(t, data, 0, n * sizeof(float)); // what Go changed
        }
    }
    if (block != NOT_A_BOUNDARY) {
        if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t) || t->ne[0] != c->n_embd) {
            c->cb_error = std::string("graph tensor ") + t->name + " is not a contiguous F32 [n_embd, n_tokens] tensor";
            return false;
        }
        if (t->ne[2] != 1 || t->ne[3] != 1) {
            // gemma3n's residual stream is several streams (AltUp).
            c->cb_error = std::string("graph tensor ") + t->name + " holds " + std::to_string(t->ne[2] * t->ne[3]) +
                          " residual streams, not one; the architecture's block boundaries are not one hidden state per token";
            return false;
        }
        c->seen++;
        size_t n = (size_t)ggml_nelements(t);
        int64_t rows = (int64_t)(n / t->ne[0]);
        if (c->skip_any) {
            if (block >= 0 && block < (int)c->skip.size() && c->skip[block]) {
                // The last block computes only the rows whose logits are
                // asked for: the last ones of the batch.
                if (c->prev_rows < rows) {
                    c->cb_error = std::string("no input kept to skip ") + t->name;
                    return false;
                }
                const float *src = c->prev.data() + (size_t)(c->prev_rows - rows) * t->ne[0];
                if (t->buffer != nullptr && ggml_backend_buffer_is_host(t->buffer)) {
                    memcpy(t->data, src, n * sizeof(float));
                } else {
                    ggml_backend_tensor_set(t, src, 0, n * sizeof(float));
                }
            } else {
                const float *h = host_data(c, t, n);
                c->prev.assign(h, h + n);
                c->prev_rows = rows;
            }
        }
        if (c->want_hidden) {
            goHiddenState(c->handle, block == EMBD_BOUNDARY, block == EMBD_BOUNDARY ? 0 : block, host_data(c, t, n), (int)t->ne[0], (int)rows);
        }
        // Returning false ends the graph computation here: what follows (the
        // final norm and the output head) is not computed.
        return block != c->stop_after;
    }
    if (is_matmul) {
        // src[0] is the weight, src[1] the activations [n_in, n_tokens(, n_expert_used)].
        const struct ggml_tensor *w = t->src[0];
        const struct ggml_tensor *x = t->src[1];
        // Only model weights (blk.*) count, as in llama.cpp's imatrix tool; KQ and KQV products do not.
        if (w == nullptr || x == nullptr || x->type != GGML_TYPE_F32 || strncmp(w->name, "blk.", 4) != 0) {
            return true;
        }
        if (!ggml_is_contiguous(x)) {
            return true;
        }
        size_t n = (size_t)ggml_nelements(x);
        float *data = host_data(c, x, n);
        const struct ggml_tensor *ids = t->op == GGML_OP_MUL_MAT_ID ? t->src[2] : nullptr;
        std::vector<int32_t> idv;
        if (ids != nullptr) {
            // ids is [n_expert_used, n_tokens], usually a strided view of an
            // argsort (ggml_argsort_top_k): read its bytes and gather it
            // through its strides, as llama.cpp's imatrix tool does.
            std::vector<char> raw(ggml_nbytes(ids));
            ggml_backend_tensor_get(ids, raw.data(), 0, raw.size());
            idv.resize((size_t)(ids->ne[0] * ids->ne[1]));
            for (int64_t r = 0; r < ids->ne[1]; r++) {
                for (int64_t k = 0; k < ids->ne[0]; k++) {
                    idv[(size_t)(r * ids->ne[0] + k)] = *(const int32_t *)(raw.data() + r * ids->nb[1] + k * ids->nb[0]);
                }
            }
        }
        goMatmulInput(c->handle, (char *)w->name, data, (int)x->ne[0], (int)x->ne[1], (int)x->ne[2],
                      idv.empty() ? nullptr : idv.data(), ids ? (int)ids->ne[0] : 0, (int)w->ne[2]);
        return true;
    }
    return true;
}

int gp_ctx_new(struct llama_model *model, int32_t n_ctx, int32_t n_threads, bool capture, uintptr_t handle,
               gp_ctx **out, char *err) {
    GUARD(err, {
        gp_ctx *c = new gp_ctx();
        c->model = model;
        c->handle = handle;
        c->n_embd = llama_model_n_embd(model);
        llama_context_params p = llama_context_default_params();
        p.n_ctx = n_ctx;
        p.n_batch = n_ctx;
        p.n_ubatch = n_ctx;
        p.n_seq_max = 1;
        p.n_threads = n_threads;
        p.n_threads_batch = n_threads;
        p.no_perf = true;
        if (capture) {
            p.cb_eval = eval_cb;
            p.cb_eval_user_data = c;
        }
        clear_errors();
        c->ctx = llama_init_from_model(model, p);
        if (c->ctx == nullptr) {
            delete c;
            set_err_logged(err, "llama.cpp could not create a context");
            return -1;
        }
        struct ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads);
        tpp.poll = 0; // sleep between computations rather than spin: Go runs then
        c->threads = ggml_threadpool_new(&tpp);
        if (c->threads == nullptr) {
            llama_free(c->ctx);
            delete c;
            set_err(err, "ggml could not start its thread pool");
            return -1;
        }
        llama_attach_threadpool(c->ctx, c->threads, c->threads);
        *out = c;
        return 0;
    })
}

void gp_ctx_free(gp_ctx *c) {
    try {
        llama_free(c->ctx);
        ggml_threadpool_free(c->threads);
    } catch (...) {
    }
    delete c;
}

void gp_ctx_set_capture(gp_ctx *c, bool hidden, bool imatrix) {
    c->want_hidden = hidden;
    c->want_imatrix = imatrix;
}

void gp_ctx_set_skip(gp_ctx *c, const int32_t *blocks, int32_t n, int32_t n_run) {
    c->skip.assign(n_run, 0);
    c->skip_any = n > 0;
    c->n_run = n_run;
    for (int32_t i = 0; i < n; i++) {
        c->skip[blocks[i]] = 1;
    }
}

void gp_ctx_set_stop(gp_ctx *c, int32_t after_block) { c->stop_after = after_block; }

void gp_ctx_set_experts(gp_ctx *c, bool on) { c->want_experts = on; }

int gp_ctx_set_boundaries(gp_ctx *c, const char *embd, const char *block_out, char *err) {
    GUARD(err, {
        c->embd = embd;
        c->block_out = std::string(block_out) + "-";
        return 0;
    })
}

void gp_ctx_set_watch(gp_ctx *c, const char *const *names, int32_t n) {
    c->watch.clear();
    for (int32_t i = 0; i < n; i++) {
        c->watch[names[i]] = i;
    }
}

int gp_dequantize(int32_t type, const void *src, float *dst, int64_t n, char *err) {
    GUARD(err, {
        const struct ggml_type_traits *tt = ggml_get_type_traits((enum ggml_type)type);
        if (tt == nullptr || tt->to_float == nullptr) {
            set_err(err, "ggml cannot convert this tensor type to float");
            return -1;
        }
        tt->to_float(src, dst, n);
        return 0;
    })
}

int gp_quantize_rows(int32_t type, const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                     size_t *written, char *err) {
    GUARD(err, {
        if (ggml_quantize_requires_imatrix((enum ggml_type)type) && imatrix == nullptr) {
            set_err(err, "this type needs an importance matrix");
            return -1;
        }
        *written = ggml_quantize_chunk((enum ggml_type)type, src, dst, 0, nrows, n_per_row, imatrix);
        return 0;
    })
}

void gp_memory_clear(gp_ctx *c) {
    try {
        llama_memory_clear(llama_get_memory(c->ctx), true);
    } catch (...) {
    }
}

int gp_decode(gp_ctx *c, const int32_t *tokens, int32_t n, int32_t pos, int32_t logits_from, char *err) {
    GUARD(err, {
        llama_batch b = llama_batch_init(n, 0, 1);
        for (int32_t i = 0; i < n; i++) {
            b.token[i] = tokens[i];
            b.pos[i] = pos + i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = i >= logits_from;
        }
        b.n_tokens = n;
        c->cb_error.clear();
        c->seen = 0;
        c->prev_rows = 0;
        int32_t rc;
        try {
            rc = llama_decode(c->ctx, b);
        } catch (...) {
            llama_batch_free(b);
            throw;
        }
        llama_batch_free(b);
        if (!c->cb_error.empty()) {
            snprintf(err, GP_ERRLEN, "%s", c->cb_error.c_str());
            return GP_CAPTURE_FAILED;
        }
        // Boundaries -1 … n_run-1, or up to where the decode stopped.
        int32_t want = c->stop_after >= -1 ? std::min(c->n_run + 1, c->stop_after + 2) : c->n_run + 1;
        if (c->skip_any && c->seen != want) {
            snprintf(err, GP_ERRLEN, "the graph named %d of the %d block boundaries (%s, %sN) that skipping blocks needs", c->seen, want, c->embd.c_str(), c->block_out.c_str());
            return GP_CAPTURE_FAILED;
        }
        if (rc != 0) {
            snprintf(err, GP_ERRLEN, "llama_decode failed with status %d", rc);
            return -1;
        }
        return 0;
    })
}

const float *gp_logits(gp_ctx *c, int32_t i) {
    try {
        return llama_get_logits_ith(c->ctx, i);
    } catch (...) {
        return nullptr;
    }
}

// tensor_quantization mirrors the struct of the same name in llama-quant.cpp
// (llama.cpp's quantize tool replicates it the same way).
struct tensor_quantization {
    std::string name;
    ggml_type quant = GGML_TYPE_COUNT;
};

int gp_quantize(const char *in, const char *out, int32_t ftype, int32_t n_threads, bool only_copy, int32_t override_type,
                const char *const *imatrix_names, const float *const *imatrix_values,
                const int64_t *imatrix_lens, int32_t n_imatrix, char *err) {
    GUARD(err, {
        std::unordered_map<std::string, std::vector<float>> imatrix;
        for (int32_t i = 0; i < n_imatrix; i++) {
            imatrix[imatrix_names[i]] = std::vector<float>(imatrix_values[i], imatrix_values[i] + imatrix_lens[i]);
        }
        llama_model_quantize_params p = llama_model_quantize_default_params();
        p.ftype = (enum llama_ftype)ftype;
        p.nthread = n_threads;
        p.allow_requantize = true;
        p.only_copy = only_copy;
        std::vector<tensor_quantization> overrides;
        if (override_type >= 0) {
            overrides.push_back({".", (ggml_type)override_type});
            p.tensor_types = &overrides;
        }
        if (n_imatrix > 0) {
            p.imatrix = &imatrix;
        }
        clear_errors();
        uint32_t rc = llama_model_quantize(in, out, &p);
        if (rc != 0) {
            set_err_logged(err, "llama_model_quantize failed");
            return -1;
        }
        return 0;
    })
}

int gp_gguf_read(const char *path, int64_t *n_tensors, int64_t *n_kv, char *general_type, size_t type_len, char *err) {
    GUARD(err, {
        struct gguf_init_params p = {true, nullptr};
        clear_errors();
        struct gguf_context *g = gguf_init_from_file(path, p);
        if (g == nullptr) {
            set_err_logged(err, "ggml's GGUF reader refused the file");
            return -1;
        }
        *n_tensors = gguf_get_n_tensors(g);
        *n_kv = gguf_get_n_kv(g);
        general_type[0] = '\0';
        int64_t k = gguf_find_key(g, "general.type");
        if (k >= 0 && gguf_get_kv_type(g, k) == GGUF_TYPE_STRING) {
            snprintf(general_type, type_len, "%s", gguf_get_val_str(g, k));
        }
        gguf_free(g);
        return 0;
    })
}

int32_t gp_type_size(int32_t type, int64_t *block_size, char *name, size_t name_len) {
    if (type < 0 || type >= GGML_TYPE_COUNT) {
        return -1;
    }
    *block_size = ggml_blck_size((enum ggml_type)type);
    snprintf(name, name_len, "%s", ggml_type_name((enum ggml_type)type));
    return (int32_t)ggml_type_size((enum ggml_type)type);
}

int gp_test_crash(int kind) {
    // Both volatile: with a constant numerator the compiler replaces the
    // division by comparisons.
    volatile int num = 7, zero = 0;
    switch (kind) {
    case 0:
        GGML_ABORT("test abort from ggufprune's shim");
    case 1:
        return num / zero;

    default:
        std::terminate();
    }
}
