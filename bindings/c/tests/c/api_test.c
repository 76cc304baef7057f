/* The C API from C: tests/c_api.rs compiles this with the system's C compiler, runs it on the
 * inputs it wrote to DIR, and compares every output it writes with the Rust library's result
 * on the same inputs.
 *
 *   api_test DIR        every method, dtype, layout and scope; misuse; 4 threads on one
 *                       compressor; the GPU path where an adapter opens (MC_TEST_NO_GPU: not)
 *
 * Inputs in DIR (little-endian, raw): {square,strided}.{f32,f16,bf16} (2 images of n x 16),
 * attention_{square,strided}.f32 (2 x n), weights.safetensors (P_meta for d = 16).
 * Outputs in DIR/out: one .f32 file per case; stdout: one line per case and per preset, which
 * the Rust side parses. Exit status 1 when a check made here fails. */

#include "metacompress.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BATCH = 2, D = 16, N_SQUARE = 64, N_STRIDED = 52, THREADS = 4, ROUNDS = 3 };

static int failures = 0;
static const char *dir;

#define CHECK(condition, ...)                                              \
    do {                                                                   \
        if (!(condition)) {                                                \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, " [last error: %s]\n", mc_last_error());       \
            failures++;                                                    \
        }                                                                  \
    } while (0)

static void *read_file(const char *name, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *file = fopen(path, "rb");
    if (!file) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    void *data = malloc(bytes);
    size_t got = fread(data, 1, bytes, file);
    int extra = fgetc(file);
    fclose(file);
    if (got != bytes || extra != EOF) {
        fprintf(stderr, "%s: expected %zu bytes\n", path, bytes);
        exit(2);
    }
    return data;
}

static void write_file(const char *name, const float *values, size_t count) {
    char path[4096];
    snprintf(path, sizeof path, "%s/out/%s.f32", dir, name);
    FILE *file = fopen(path, "wb");
    if (!file || fwrite(values, sizeof(float), count, file) != count) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    fclose(file);
}

/* One layout's inputs. */
typedef struct {
    const char *name;
    size_t n;
    const mc_grid *grids; /* NULL: one square grid */
    size_t n_grids;
    double keep;
    void *tokens[3]; /* by mc_dtype */
    float *attention;
} input;

/* Two grids whose rows interleave (6x4, rows 8 tokens apart, from tokens 0 and 4), then 4
 * loose tokens: n = 52. */
static const mc_grid strided_grids[2] = {{0, 6, 4, 8}, {4, 6, 4, 8}};

static const char *METHODS[] = {"metacompress", "pool", "sample", "random",
                                "tome", "divprune", "visionzip", "prumerge"};
static const char *DTYPE_NAMES[] = {"f32", "f16", "bf16"};

static void load(input *in) {
    char name[256];
    size_t sizes[3] = {4, 2, 2};
    for (int dtype = 0; dtype < 3; dtype++) {
        snprintf(name, sizeof name, "%s.%s", in->name, DTYPE_NAMES[dtype]);
        in->tokens[dtype] = read_file(name, BATCH * in->n * D * sizes[dtype]);
    }
    snprintf(name, sizeof name, "attention_%s.f32", in->name);
    in->attention = read_file(name, BATCH * in->n * sizeof(float));
}

static mc_call_params params_for(const input *in, const char *method, const char *scope) {
    mc_call_params params = mc_call_params_default();
    params.keep = in->keep;
    params.method = method;
    params.scope = scope;
    params.seed = 7;
    params.grids = in->grids;
    params.n_grids = in->n_grids;
    params.attention = in->attention;
    return params;
}

/* One case: mc_reduced_count, mc_compress into a buffer one float larger than needed (the
 * extra float must stay untouched), the output written for the Rust side. */
static void run_case(mc_compressor *compressor, const char *precision, const input *in,
                     const char *method, mc_dtype dtype, const char *scope, size_t batch) {
    char name[256];
    snprintf(name, sizeof name, "%s-%s-%s-%s-%s-b%zu", precision, in->name, method,
             DTYPE_NAMES[dtype], scope, batch);
    mc_call_params params = params_for(in, method, scope);
    size_t m = 0, m_written = 0;
    uint32_t shapes[4] = {0};
    mc_status status = mc_reduced_count(compressor, in->n, &params, &m, shapes);
    CHECK(status == MC_OK, "%s: mc_reduced_count gave %d", name, status);
    size_t needed = batch * m * D;
    float *out = malloc((needed + 1) * sizeof(float));
    for (size_t i = 0; i <= needed; i++) out[i] = 12345.0f;
    status = mc_compress(compressor, in->tokens[dtype], dtype, batch, in->n, D, &params, out,
                         needed + 1, &m_written);
    CHECK(status == MC_OK, "%s: mc_compress gave %d", name, status);
    CHECK(m_written == m, "%s: mc_compress wrote m = %zu, mc_reduced_count said %zu", name,
          m_written, m);
    CHECK(out[needed] == 12345.0f, "%s: mc_compress wrote past batch x m x d", name);
    for (size_t i = 0; i < needed; i++) {
        if (out[i] == 12345.0f || !isfinite(out[i])) {
            CHECK(0, "%s: out[%zu] = %g was not written", name, i, out[i]);
            break;
        }
    }
    write_file(name, out, needed);
    printf("case %s precision=%s layout=%s method=%s dtype=%s scope=%s keep=%g seed=7 batch=%zu "
           "m=%zu shapes=",
           name, precision, in->name, method, DTYPE_NAMES[dtype], scope, in->keep, batch, m);
    size_t grids = in->grids ? in->n_grids : 1;
    for (size_t g = 0; g < grids; g++)
        printf("%s%ux%u", g ? "," : "", shapes[2 * g], shapes[2 * g + 1]);
    printf("\n");
    free(out);
}

/* A status and a piece of the line a misuse must give. */
#define EXPECT(call, expected_status, piece)                                               \
    do {                                                                                   \
        mc_status got_ = (call);                                                           \
        CHECK(got_ == (expected_status) && strstr(mc_last_error(), (piece)) != NULL,       \
              "%s gave %d, expected %d with \"%s\"", #call, got_, (expected_status), piece); \
    } while (0)

static void misuse(mc_compressor *compressor, mc_compressor *no_weights, input *square,
                   input *strided) {
    mc_compressor *opened = (mc_compressor *)0x1;
    mc_open_params open = mc_open_params_default();
    open.backend = "cpu";
    EXPECT(mc_open(NULL, &open, NULL), MC_USAGE, "mc_open: out is NULL");
    open.backend = "cuda";
    EXPECT(mc_open(NULL, &open, &opened), MC_USAGE,
           "mc_open_params.backend \"cuda\" is not one of auto, vulkan");
    CHECK(opened == NULL, "a failed mc_open leaves *out NULL");
    open.backend = "cpu";
    open.precision = "f64";
    EXPECT(mc_open(NULL, &open, &opened), MC_USAGE, "mc_open_params.precision \"f64\"");
    open.precision = "f16";
    EXPECT(mc_open(NULL, &open, &opened), MC_USAGE, "is not for the cpu backend");
    open.precision = NULL; /* the default */
    open.threads = 5000;
    EXPECT(mc_open(NULL, &open, &opened), MC_USAGE, "threads = 5000 is out of range");
    open.threads = 1;
    char missing[4096];
    snprintf(missing, sizeof missing, "%s/no-such-weights.safetensors", dir);
    EXPECT(mc_open(missing, &open, &opened), MC_ERROR, "no-such-weights.safetensors");
    EXPECT(mc_open(dir, &open, &opened), MC_ERROR, dir); /* a directory */

    CHECK(mc_device(NULL) == NULL && strstr(mc_last_error(), "mc_device: compressor is NULL"),
          "mc_device(NULL)");
    mc_close(NULL);

    float out[BATCH * N_SQUARE * D];
    size_t m = 0;
    void *x = square->tokens[MC_F32];
    mc_call_params params = params_for(square, "metacompress", "image");
    size_t full = sizeof out / sizeof out[0];
    EXPECT(mc_compress(NULL, x, MC_F32, 2, 64, D, &params, out, full, &m), MC_USAGE,
           "mc_compress: compressor is NULL");
    EXPECT(mc_compress(compressor, NULL, MC_F32, 2, 64, D, &params, out, full, &m), MC_USAGE,
           "mc_compress: tokens is NULL");
    EXPECT(mc_compress(compressor, x, MC_F32, 2, 64, D, &params, NULL, full, &m), MC_USAGE,
           "mc_compress: out is NULL");
    EXPECT(mc_compress(compressor, x, (mc_dtype)7, 2, 64, D, &params, out, full, &m), MC_USAGE,
           "dtype = 7 is not an mc_dtype");
    EXPECT(mc_compress(compressor, x, MC_F32, 0, 64, D, &params, out, full, &m), MC_USAGE,
           "batch = 0");
    EXPECT(mc_compress(compressor, x, MC_F32, 2, 0, D, &params, out, full, &m), MC_USAGE,
           "n = 0 tokens is out of range");
    EXPECT(mc_compress(compressor, x, MC_F32, 2, SIZE_MAX / 4, D, &params, out, full, &m),
           MC_USAGE, "is more than memory can hold");
    EXPECT(mc_compress(compressor, (char *)x + 1, MC_F32, 2, 64, D, &params, out, full, &m),
           MC_USAGE, "not aligned");
    m = 0;
    EXPECT(mc_compress(compressor, x, MC_F32, 2, 64, D, &params, out, 10, &m), MC_USAGE,
           "out_len = 10 floats is too small; the call writes batch x m x d = 2 x 16 x 16 = 512");
    CHECK(m == 16, "m is written when out_len is too small (m = %zu)", m);
    EXPECT(mc_compress(compressor, x, MC_F32, 2, 64, 8, &params, out, full, &m), MC_ERROR,
           "the weights expect d = 16");
    EXPECT(mc_compress(compressor, x, MC_F32, 2, 63, D, &params, out, full, &m), MC_USAGE,
           "63 tokens is not a perfect square");

    /* The call's parameters. */
    mc_call_params bad = params;
    bad.keep = 0.0;
    EXPECT(mc_compress(compressor, x, MC_F32, 2, 64, D, &bad, out, full, &m), MC_USAGE,
           "keep 0 is out of range");
    bad = params;
    bad.method = "magic";
    EXPECT(mc_compress(compressor, x, MC_F32, 2, 64, D, &bad, out, full, &m), MC_USAGE,
           "mc_call_params.method \"magic\" is not one of metacompress, pool");
    bad = params;
    bad.scope = "everything";
    EXPECT(mc_compress(compressor, x, MC_F32, 2, 64, D, &bad, out, full, &m), MC_USAGE,
           "mc_call_params.scope \"everything\"");
    bad = params;
    bad.n_grids = 3;
    EXPECT(mc_compress(compressor, x, MC_F32, 2, 64, D, &bad, out, full, &m), MC_USAGE,
           "grids is NULL but n_grids = 3");
    bad.grids = strided_grids;
    bad.n_grids = 0;
    EXPECT(mc_compress(compressor, x, MC_F32, 2, 64, D, &bad, out, full, &m), MC_USAGE,
           "n_grids = 0 with a grids pointer");
    /* Grids that do not fit n: 6x4 rows 8 apart end at token 44 + 4 = 48 > 40. */
    bad.n_grids = 2;
    EXPECT(mc_reduced_count(compressor, 40, &bad, &m, NULL), MC_USAGE,
           "ends past the last token; expected it inside 0..40");
    mc_grid overlapping[2] = {{0, 6, 4, 8}, {3, 6, 4, 8}};
    bad.grids = overlapping;
    EXPECT(mc_reduced_count(compressor, N_STRIDED, &bad, &m, NULL), MC_USAGE, "overlap");
    mc_grid narrow[1] = {{0, 2, 4, 3}};
    bad.grids = narrow;
    bad.n_grids = 1;
    EXPECT(mc_reduced_count(compressor, N_STRIDED, &bad, &m, NULL), MC_USAGE,
           "row stride of 3 below its width 4");
    mc_grid huge[1] = {{UINT64_MAX, 1, 1, 0}};
    bad.grids = huge;
    EXPECT(mc_reduced_count(compressor, N_STRIDED, &bad, &m, NULL), MC_USAGE,
           "ends past the last token");
    EXPECT(mc_reduced_count(compressor, N_STRIDED, &params, NULL, NULL), MC_USAGE,
           "mc_reduced_count: m is NULL");
    EXPECT(mc_reduced_count(NULL, N_STRIDED, &params, &m, NULL), MC_USAGE,
           "mc_reduced_count: compressor is NULL");
    EXPECT(mc_reduced_count(compressor, (size_t)1 << 40, &params, &m, NULL), MC_USAGE,
           "tokens is out of range");
    /* Stride 0 is the width: one 8x8 grid is the square default. */
    mc_grid square_grid[1] = {{0, 8, 8, 0}};
    bad = params;
    bad.grids = square_grid;
    bad.n_grids = 1;
    size_t m_square = 0;
    CHECK(mc_reduced_count(compressor, N_SQUARE, &bad, &m, NULL) == MC_OK &&
              mc_reduced_count(compressor, N_SQUARE, &params, &m_square, NULL) == MC_OK &&
              m == m_square && m == 16,
          "stride 0: m = %zu, square m = %zu", m, m_square);

    /* What methods need. */
    bad = params;
    bad.method = "visionzip";
    bad.attention = NULL;
    EXPECT(mc_compress(compressor, x, MC_F32, 2, 64, D, &bad, out, full, &m), MC_USAGE,
           "method visionzip needs the vision tower's [CLS] attention");
    EXPECT(mc_compress(no_weights, x, MC_F32, 2, 64, D, &params, out, full, &m), MC_USAGE,
           "method metacompress needs P_meta weights");
    float *negative = malloc(BATCH * N_SQUARE * sizeof(float));
    memcpy(negative, square->attention, BATCH * N_SQUARE * sizeof(float));
    negative[3] = -1.0f;
    bad.attention = negative;
    mc_status status = mc_compress(compressor, x, MC_F32, 2, 64, D, &bad, out, full, &m);
    CHECK(status != MC_OK && strstr(mc_last_error(), "attention"), "negative attention: %d",
          status);
    free(negative);

    /* Values: non-finite tokens are a failure, not a usage error. */
    float *nan_tokens = malloc(BATCH * N_SQUARE * D * sizeof(float));
    memcpy(nan_tokens, x, BATCH * N_SQUARE * D * sizeof(float));
    nan_tokens[N_SQUARE * D + 5] = NAN;
    EXPECT(mc_compress(compressor, nan_tokens, MC_F32, 2, 64, D, &params, out, full, &m),
           MC_ERROR, "features[1, 0, 5] is NaN; expected finite values");
    free(nan_tokens);
    (void)strided;

    /* Presets. */
    size_t n_grids = 0, n = 0;
    EXPECT(mc_layout(NULL, NULL, NULL, 0, &n_grids, &n), MC_USAGE, "mc_layout: preset is NULL");
    EXPECT(mc_layout("llava-9", NULL, NULL, 0, &n_grids, &n), MC_USAGE,
           "--layout \"llava-9\" is not a layout preset");
    EXPECT(mc_layout("llava-next:672x672", "[[1,2]]", NULL, 0, &n_grids, &n), MC_USAGE,
           "is not a resolution the model tiles");
    EXPECT(mc_layout("llava-1.5", NULL, NULL, 0, NULL, &n), MC_USAGE, "n_grids is NULL");
    mc_grid one[1];
    EXPECT(mc_layout("qwen2-vl:2x28x42", NULL, one, 1, &n_grids, &n), MC_USAGE,
           "capacity = 1 grids is too small; qwen2-vl:2x28x42 has 2");
    CHECK(n_grids == 2 && n == 588, "counts written with a capacity too small");
    EXPECT(mc_layout("llava-1.5", NULL, NULL, 4, &n_grids, &n), MC_USAGE,
           "grids is NULL with capacity = 4");
}

/* The presets the Rust side compares with Layout::preset, and a call on each. */
static void presets(mc_compressor *compressor) {
    const char *names[] = {"llava-1.5", "llava-next:672x672", "llava-next:1000x667",
                           "qwen2-vl:2x28x42"};
    for (size_t p = 0; p < sizeof names / sizeof names[0]; p++) {
        size_t n_grids = 0, n = 0;
        mc_status status = mc_layout(names[p], NULL, NULL, 0, &n_grids, &n);
        CHECK(status == MC_OK && n_grids > 0, "%s: counting gave %d", names[p], status);
        mc_grid *grids = calloc(n_grids, sizeof(mc_grid));
        status = mc_layout(names[p], NULL, grids, n_grids, &n_grids, &n);
        CHECK(status == MC_OK, "%s: mc_layout gave %d", names[p], status);
        printf("preset %s n=%zu grids=", names[p], n);
        for (size_t g = 0; g < n_grids; g++)
            printf("%s%llu:%llu:%llu:%llu", g ? "," : "", (unsigned long long)grids[g].offset,
                   (unsigned long long)grids[g].height, (unsigned long long)grids[g].width,
                   (unsigned long long)grids[g].stride);
        mc_call_params params = mc_call_params_default();
        params.grids = grids;
        params.n_grids = n_grids;
        size_t m = 0;
        uint32_t *shapes = calloc(2 * n_grids, sizeof(uint32_t));
        status = mc_reduced_count(compressor, n, &params, &m, shapes);
        CHECK(status == MC_OK, "%s: mc_reduced_count gave %d", names[p], status);
        printf(" m=%zu shapes=", m);
        for (size_t g = 0; g < n_grids; g++)
            printf("%s%ux%u", g ? "," : "", shapes[2 * g], shapes[2 * g + 1]);
        printf("\n");
        free(shapes);
        free(grids);
    }
}

/* Threads: each compresses with methods of its own, several times, on the one compressor,
 * and must get what one thread alone got; each one's error line is its own. */
typedef struct {
    mc_compressor *compressor;
    const input *in;
    const float *expected[2];
    size_t len[2];
    int id;
    int failures;
} job;

static const char *THREAD_METHODS[2] = {"metacompress", "tome"};

static void *work(void *argument) {
    job *j = argument;
    for (int round = 0; round < ROUNDS; round++) {
        for (int which = 0; which < 2; which++) {
            int k = (which + j->id) % 2;
            mc_call_params params = params_for(j->in, THREAD_METHODS[k], "image");
            float *out = malloc(j->len[k] * sizeof(float));
            size_t m = 0;
            mc_status status = mc_compress(j->compressor, j->in->tokens[MC_F32], MC_F32, BATCH,
                                           j->in->n, D, &params, out, j->len[k], &m);
            if (status != MC_OK || memcmp(out, j->expected[k], j->len[k] * sizeof(float))) {
                fprintf(stderr, "FAIL thread %d round %d %s: status %d or other values\n", j->id,
                        round, THREAD_METHODS[k], status);
                j->failures++;
            }
            free(out);
        }
        /* A misuse of its own: this thread's line names its own keep. */
        mc_call_params params = params_for(j->in, "pool", "image");
        params.keep = 2.0 + j->id;
        size_t m = 0;
        float out[1];
        mc_status status = mc_compress(j->compressor, j->in->tokens[MC_F32], MC_F32, BATCH,
                                       j->in->n, D, &params, out, 1, &m);
        char piece[64];
        snprintf(piece, sizeof piece, "keep %d is out of range", 2 + j->id);
        if (status != MC_USAGE || !strstr(mc_last_error(), piece)) {
            fprintf(stderr, "FAIL thread %d: status %d, line %s\n", j->id, status,
                    mc_last_error());
            j->failures++;
        }
    }
    return NULL;
}

static void threads(mc_compressor *compressor, const input *in) {
    float *expected[2];
    size_t len[2];
    for (int k = 0; k < 2; k++) {
        mc_call_params params = params_for(in, THREAD_METHODS[k], "image");
        size_t m = 0;
        CHECK(mc_reduced_count(compressor, in->n, &params, &m, NULL) == MC_OK, "count");
        len[k] = BATCH * m * D;
        expected[k] = malloc(len[k] * sizeof(float));
        CHECK(mc_compress(compressor, in->tokens[MC_F32], MC_F32, BATCH, in->n, D, &params,
                          expected[k], len[k], &m) == MC_OK,
              "one thread's %s", THREAD_METHODS[k]);
    }
    /* This thread's line before, and after the others failed in theirs. */
    mc_call_params params = params_for(in, "nothing", "image");
    size_t m = 0;
    mc_reduced_count(compressor, in->n, &params, &m, NULL);
    pthread_t ids[THREADS];
    job jobs[THREADS];
    for (int t = 0; t < THREADS; t++) {
        jobs[t] = (job){compressor, in, {expected[0], expected[1]}, {len[0], len[1]}, t, 0};
        pthread_create(&ids[t], NULL, work, &jobs[t]);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(ids[t], NULL);
        failures += jobs[t].failures;
    }
    CHECK(strstr(mc_last_error(), "\"nothing\"") != NULL, "the main thread's line is its own");
    free(expected[0]);
    free(expected[1]);
}

/* The GPU path through the C API, where an adapter opens (not under valgrind: the Rust side
 * sets MC_TEST_NO_GPU there): metacompress on the square input, against the CPU path's
 * result within f32 rounding. Prints "gpu DEVICE" or "gpu none". */
static void gpu(const char *weights, mc_compressor *cpu, const input *in) {
    const char *backends[] = {"vulkan", "metal", "dx12"};
    mc_compressor *device = NULL;
    if (getenv("MC_TEST_NO_GPU") == NULL) {
        for (size_t b = 0; b < 3 && device == NULL; b++) {
            mc_open_params open = mc_open_params_default();
            open.backend = backends[b];
            if (mc_open(weights, &open, &device) != MC_OK) device = NULL;
        }
    }
    if (device == NULL) {
        printf("gpu none\n");
        return;
    }
    printf("gpu %s\n", mc_device(device));
    mc_call_params params = params_for(in, "metacompress", "image");
    size_t m = 0;
    CHECK(mc_reduced_count(device, in->n, &params, &m, NULL) == MC_OK, "gpu: count");
    size_t len = BATCH * m * D;
    float *expected = malloc(len * sizeof(float)), *got = malloc(len * sizeof(float));
    for (int dtype = 0; dtype < 3; dtype++) {
        CHECK(mc_compress(cpu, in->tokens[dtype], (mc_dtype)dtype, BATCH, in->n, D, &params,
                          expected, len, &m) == MC_OK,
              "gpu: the CPU path");
        CHECK(mc_compress(device, in->tokens[dtype], (mc_dtype)dtype, BATCH, in->n, D, &params,
                          got, len, &m) == MC_OK,
              "gpu: %s", DTYPE_NAMES[dtype]);
        for (size_t i = 0; i < len; i++) {
            if (!(fabsf(got[i] - expected[i]) <= 1e-4f * (1.0f + fabsf(expected[i])))) {
                CHECK(0, "gpu %s: token value %zu is %g; the CPU path's is %g",
                      DTYPE_NAMES[dtype], i, got[i], expected[i]);
                break;
            }
        }
    }
    free(expected);
    free(got);
    mc_close(device);
}

/* One P for several token sets (mc_compress_sharing): a set equal to the tokens reduces to
 * the main result and a set of twice the tokens to exactly twice it (doubling is exact) for
 * methods whose Y is the product with P itself (pool, tome); metacompress, whose Y comes from
 * its own forward pass, within 1e-5. A wider set (d + 3) runs too. Then its misuse. */
static void sharing(mc_compressor *compressor, const input *in) {
    static const char *methods[3] = {"pool", "tome", "metacompress"};
    size_t count = BATCH * in->n * D, wide_count = BATCH * in->n * (D + 3);
    const float *x = in->tokens[MC_F32];
    float *doubled = malloc(count * sizeof(float));
    float *wide = malloc(wide_count * sizeof(float));
    for (size_t i = 0; i < count; i++) doubled[i] = 2.0f * x[i];
    for (size_t i = 0; i < wide_count; i++) wide[i] = (float)((i * 7919) % 97) / 97.0f - 0.5f;
    for (int k = 0; k < 3; k++) {
        mc_call_params params = params_for(in, methods[k], "image");
        size_t m = 0;
        CHECK(mc_reduced_count(compressor, in->n, &params, &m, NULL) == MC_OK, "sharing count");
        size_t needed = BATCH * m * D, wide_needed = BATCH * m * (D + 3);
        float *out = malloc((3 * needed + wide_needed) * sizeof(float));
        mc_token_set sets[3] = {{x, MC_F32, D, out + needed, needed},
                                {doubled, MC_F32, D, out + 2 * needed, needed},
                                {wide, MC_F32, D + 3, out + 3 * needed, wide_needed}};
        mc_status status = mc_compress_sharing(compressor, x, MC_F32, BATCH, in->n, D, &params,
                                               sets, 3, out, needed, &m);
        CHECK(status == MC_OK, "sharing %s gave %d", methods[k], status);
        double diff = 0, norm = 0;
        for (size_t i = 0; i < needed; i++) {
            if (k < 2 && (out[needed + i] != out[i] || out[2 * needed + i] != 2.0f * out[i])) {
                CHECK(0, "sharing %s: element %zu: %g, %g against %g", methods[k], i,
                      out[needed + i], out[2 * needed + i], out[i]);
                break;
            }
            double a = out[needed + i] - out[i], b = out[2 * needed + i] - 2.0 * out[i];
            diff += a * a + b * b;
            norm += 5.0 * out[i] * out[i];
        }
        CHECK(norm > 0 && sqrt(diff / norm) < 1e-5, "sharing %s: error %g", methods[k],
              sqrt(diff / norm));
        for (size_t i = 0; i < wide_needed; i++) {
            if (!isfinite(out[3 * needed + i])) {
                CHECK(0, "sharing %s: wide set element %zu = %g", methods[k], i,
                      out[3 * needed + i]);
                break;
            }
        }
        if (k == 0) {
            mc_token_set bad = {x, MC_F32, D, NULL, needed};
            EXPECT(mc_compress_sharing(compressor, x, MC_F32, BATCH, in->n, D, &params, &bad, 1,
                                       out, needed, &m),
                   MC_USAGE, "extra[0].out is NULL");
            EXPECT(mc_compress_sharing(compressor, x, MC_F32, BATCH, in->n, D, &params, NULL, 2,
                                       out, needed, &m),
                   MC_USAGE, "extra is NULL but n_extra = 2");
            mc_token_set small = {x, MC_F32, D, out + needed, 1};
            EXPECT(mc_compress_sharing(compressor, x, MC_F32, BATCH, in->n, D, &params, &small,
                                       1, out, needed, &m),
                   MC_USAGE, "extra[0].out_len = 1 floats is too small");
            mc_token_set odd = {x, (mc_dtype)9, D, out + needed, needed};
            EXPECT(mc_compress_sharing(compressor, x, MC_F32, BATCH, in->n, D, &params, &odd, 1,
                                       out, needed, &m),
                   MC_USAGE, "extra[0].tokens dtype = 9 is not an mc_dtype");
        }
        free(out);
    }
    free(doubled);
    free(wide);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: api_test DIR\n");
        return 2;
    }
    dir = argv[1];
    CHECK(strcmp(mc_last_error(), "") == 0, "no error line before any failure");
    char compiled[64];
    snprintf(compiled, sizeof compiled, "%d.%d.%d", MC_VERSION_MAJOR, MC_VERSION_MINOR, MC_VERSION_PATCH);
    CHECK(mc_version() && strcmp(mc_version(), compiled) == 0, "mc_version %s, header %s",
          mc_version() ? mc_version() : "NULL", compiled);
    input square = {"square", N_SQUARE, NULL, 0, 0.25, {0}, NULL};
    input strided = {"strided", N_STRIDED, strided_grids, 2, 0.5, {0}, NULL};
    load(&square);
    load(&strided);

    char weights[4096];
    snprintf(weights, sizeof weights, "%s/weights.safetensors", dir);
    mc_open_params open = mc_open_params_default();
    CHECK(strcmp(open.backend, "auto") == 0 && strcmp(open.precision, "f32") == 0 &&
              open.adapter == NULL && open.threads == 0,
          "mc_open_params_default");
    mc_call_params defaults = mc_call_params_default();
    CHECK(defaults.keep == 0.1 && strcmp(defaults.scope, "image") == 0 &&
              strcmp(defaults.method, "metacompress") == 0 && defaults.seed == 0 &&
              defaults.grids == NULL && defaults.n_grids == 0 && defaults.attention == NULL,
          "mc_call_params_default");
    open.backend = "cpu";
    open.threads = 2; /* the Rust side computes on 2 threads too */
    mc_compressor *f32 = NULL, *bf16 = NULL, *no_weights = NULL;
    CHECK(mc_open(weights, &open, &f32) == MC_OK && f32, "mc_open cpu f32");
    open.precision = "bf16";
    CHECK(mc_open(weights, &open, &bf16) == MC_OK && bf16, "mc_open cpu bf16");
    open.precision = "f32";
    CHECK(mc_open(NULL, &open, &no_weights) == MC_OK && no_weights, "mc_open without weights");
    if (!f32 || !bf16 || !no_weights) return 1;
    const char *device = mc_device(f32);
    CHECK(device && strstr(device, "2 threads"), "mc_device: %s", device ? device : "NULL");
    fprintf(stderr, "device: %s\n", device);

    input *inputs[2] = {&square, &strided};
    for (int i = 0; i < 2; i++) {
        for (size_t method = 0; method < sizeof METHODS / sizeof METHODS[0]; method++) {
            for (int dtype = 0; dtype < 3; dtype++) {
                run_case(f32, "f32", inputs[i], METHODS[method], (mc_dtype)dtype, "image", BATCH);
                if (method == 0)
                    run_case(f32, "f32", inputs[i], METHODS[method], (mc_dtype)dtype, "grid",
                             BATCH);
            }
        }
        run_case(bf16, "bf16", inputs[i], "metacompress", MC_F32, "grid", BATCH);
        run_case(bf16, "bf16", inputs[i], "metacompress", MC_BF16, "image", 1);
        run_case(no_weights, "f32", inputs[i], "pool", MC_F16, "image", 1);
    }
    misuse(f32, no_weights, &square, &strided);
    presets(f32);
    threads(f32, &strided);
    sharing(f32, &strided);
    gpu(weights, f32, &square);

    mc_close(f32);
    mc_close(bf16);
    mc_close(no_weights);
    for (int i = 0; i < 2; i++) {
        for (int dtype = 0; dtype < 3; dtype++) free(inputs[i]->tokens[dtype]);
        free(inputs[i]->attention);
    }
    fflush(stdout);
    if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
