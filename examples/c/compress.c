/* Compresses visual tokens through the C API: what a native app does with its vision
 * encoder's embeddings (a llama.cpp-style pipeline: after the encoder, before decoding).
 *
 *   compress IN.f32 N D OUT.f32 [options]
 *
 * IN.f32 holds raw little-endian f32 tokens, B images of N x D (B from the file's size);
 * OUT.f32 gets B x M x D. Options:
 *   --weights W.safetensors   P_meta weights (needed by the default method, metacompress)
 *   --method NAME             metacompress, pool, sample, random, tome, divprune
 *   --keep K                  keep fraction (default 0.1)
 *   --layout PRESET           llava-1.5, llava-next:WIDTHxHEIGHT, qwen2-vl:TxHxW
 *                             (default: one square grid)
 *   --backend NAME            auto (default), vulkan, metal, dx12, gl, cpu, reference
 *
 * Build (after cargo build --release at the repository's root):
 *   cc -I include examples/c/compress.c target/release/libmetacompress.a \
 *      -ldl -lgcc_s -lutil -lrt -lpthread -lm -lc -o compress
 */

#define _POSIX_C_SOURCE 200112L /* setenv */

#include "metacompress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A failed call's line, and its status as the exit status (2: usage, 1: failure). */
static int fail(const char *call, mc_status status) {
    fprintf(stderr, "compress: %s: %s\n", call, mc_last_error());
    return (int)status;
}

int main(int argc, char **argv) {
    if (argc < 5 || (argc - 5) % 2 != 0) {
        fprintf(stderr, "usage: compress IN.f32 N D OUT.f32 [--weights W] [--method M] "
                        "[--keep K] [--layout PRESET] [--backend B]\n");
        return 2;
    }
    const char *in_path = argv[1], *out_path = argv[4];
    size_t n = strtoull(argv[2], NULL, 10), d = strtoull(argv[3], NULL, 10);
    const char *weights = NULL, *preset = NULL;
    mc_open_params open = mc_open_params_default();
    mc_call_params call = mc_call_params_default();
    for (int i = 5; i < argc; i += 2) {
        const char *flag = argv[i], *value = argv[i + 1];
        if (!strcmp(flag, "--weights")) weights = value;
        else if (!strcmp(flag, "--method")) call.method = value;
        else if (!strcmp(flag, "--keep")) call.keep = strtod(value, NULL);
        else if (!strcmp(flag, "--layout")) preset = value;
        else if (!strcmp(flag, "--backend")) open.backend = value;
        else {
            fprintf(stderr, "compress: unknown option %s\n", flag);
            return 2;
        }
    }

    /* The tokens: the encoder's output (here, a file). */
    FILE *file = fopen(in_path, "rb");
    if (!file) {
        perror(in_path);
        return 1;
    }
    fseek(file, 0, SEEK_END);
    long bytes = ftell(file);
    fseek(file, 0, SEEK_SET);
    size_t per_image = n * d * sizeof(float);
    if (n == 0 || d == 0 || bytes <= 0 || (size_t)bytes % per_image != 0) {
        fprintf(stderr, "compress: %s holds %ld bytes, not a whole number of %zu x %zu f32 "
                        "images\n", in_path, bytes, n, d);
        fclose(file);
        return 2;
    }
    size_t batch = (size_t)bytes / per_image;
    float *tokens = malloc((size_t)bytes);
    size_t read = fread(tokens, 1, (size_t)bytes, file);
    fclose(file);
    if (read != (size_t)bytes) {
        fprintf(stderr, "compress: short read of %s\n", in_path);
        return 1;
    }

    /* The layout: a preset's grids, or one square grid. */
    mc_grid *grids = NULL;
    if (preset) {
        size_t n_grids = 0, preset_n = 0;
        mc_status status = mc_layout(preset, NULL, NULL, 0, &n_grids, &preset_n);
        if (status != MC_OK) return fail("mc_layout", status);
        grids = calloc(n_grids, sizeof(mc_grid));
        status = mc_layout(preset, NULL, grids, n_grids, &n_grids, &preset_n);
        if (status != MC_OK) return fail("mc_layout", status);
        if (preset_n != n) {
            fprintf(stderr, "compress: %s describes %zu tokens per image; the file has %zu\n",
                    preset, preset_n, n);
            return 2;
        }
        call.grids = grids;
        call.n_grids = n_grids;
    }

#ifdef __unix__
    /* Headless Linux: Mesa's Wayland probe complains on stderr when XDG_RUNTIME_DIR is unset.
     * Compute needs no display: point it somewhere harmless before a GPU is looked for (the
     * library leaves the environment alone; the metacompress CLI does the same as this). */
    if (!getenv("XDG_RUNTIME_DIR")) setenv("XDG_RUNTIME_DIR", "/tmp", 0);
#endif
    mc_compressor *compressor = NULL;
    mc_status status = mc_open(weights, &open, &compressor);
    if (status != MC_OK) return fail("mc_open", status);
    fprintf(stderr, "compress: running on %s\n", mc_device(compressor));

    /* m first: the language model's prompt needs m placeholder tokens per image. */
    size_t m = 0;
    status = mc_reduced_count(compressor, n, &call, &m, NULL);
    if (status != MC_OK) return fail("mc_reduced_count", status);
    size_t out_len = batch * m * d;
    float *out = malloc(out_len * sizeof(float));
    status = mc_compress(compressor, tokens, MC_F32, batch, n, d, &call, out, out_len, &m);
    if (status != MC_OK) return fail("mc_compress", status);
    fprintf(stderr, "compress: %zu image(s) of %zu tokens -> %zu tokens each\n", batch, n, m);

    FILE *result = fopen(out_path, "wb");
    if (!result || fwrite(out, sizeof(float), out_len, result) != out_len) {
        perror(out_path);
        return 1;
    }
    fclose(result);
    mc_close(compressor);
    free(out);
    free(tokens);
    free(grids);
    return 0;
}
