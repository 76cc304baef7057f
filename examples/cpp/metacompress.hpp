// A small RAII wrapper over the C API (include/metacompress.h) for C++17: a compressor that
// closes itself, std::vector<float> in and out, errors as exceptions carrying the status and
// mc_last_error()'s line. Header-only; copy it into a project as it is or adapt it.
#pragma once

#include "metacompress.h"

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace metacompress {

/// A failed call: `status` is MC_USAGE (an argument out of range) or MC_ERROR.
class Error : public std::runtime_error {
public:
    Error(mc_status status, const std::string &call)
        : std::runtime_error(call + ": " + mc_last_error()), status(status) {}
    mc_status status;
};

inline void check(mc_status status, const char *call) {
    if (status != MC_OK) throw Error(status, call);
}

/// One call's options (the C struct's fields, with owned grids).
struct Call {
    double keep = 0.1;
    std::string scope = "image";
    std::string method = "metacompress";
    std::uint64_t seed = 0;
    std::vector<mc_grid> grids;   // empty: one square grid
    const float *attention = nullptr;

    mc_call_params params() const {
        mc_call_params params = mc_call_params_default();
        params.keep = keep;
        params.scope = scope.c_str();
        params.method = method.c_str();
        params.seed = seed;
        params.grids = grids.empty() ? nullptr : grids.data();
        params.n_grids = grids.size();
        params.attention = attention;
        return params;
    }
};

/// A preset's grids (`llava-next:672x672`, ...) and the tokens per image they describe.
inline std::vector<mc_grid> layout(const std::string &preset, std::size_t *n = nullptr) {
    std::size_t count = 0, tokens = 0;
    check(mc_layout(preset.c_str(), nullptr, nullptr, 0, &count, &tokens), "mc_layout");
    std::vector<mc_grid> grids(count);
    check(mc_layout(preset.c_str(), nullptr, grids.data(), count, &count, &tokens), "mc_layout");
    if (n) *n = tokens;
    return grids;
}

/// A compressor; one may serve several threads at once.
class Compressor {
public:
    /// `weights`: a P_meta safetensors file, or empty for the methods that need none.
    explicit Compressor(const std::string &weights = "", const std::string &backend = "auto",
                        const std::string &precision = "f32", std::uint32_t threads = 0) {
        mc_open_params params = mc_open_params_default();
        params.backend = backend.c_str();
        params.precision = precision.c_str();
        params.threads = threads;
        mc_compressor *opened = nullptr;
        check(mc_open(weights.empty() ? nullptr : weights.c_str(), &params, &opened), "mc_open");
        handle_.reset(opened);
    }

    std::string device() const { return mc_device(handle_.get()); }

    /// Reduced tokens per image of `n` tokens: the number of image placeholders the language
    /// model's prompt must hold.
    std::size_t reduced_count(std::size_t n, const Call &call = Call()) const {
        mc_call_params params = call.params();
        std::size_t m = 0;
        check(mc_reduced_count(handle_.get(), n, &params, &m, nullptr), "mc_reduced_count");
        return m;
    }

    /// `batch` images of `n x d` f32 tokens to `batch x m x d`.
    std::vector<float> compress(const std::vector<float> &tokens, std::size_t batch,
                                std::size_t n, std::size_t d, const Call &call = Call()) const {
        if (tokens.size() != batch * n * d)
            throw Error(MC_USAGE, "compress: tokens.size() is not batch x n x d");
        return compress_raw(tokens.data(), MC_F32, batch, n, d, call);
    }

    /// The same from f16 or bf16 tokens (`dtype` MC_F16 or MC_BF16, 16-bit values).
    std::vector<float> compress(const std::vector<std::uint16_t> &tokens, mc_dtype dtype,
                                std::size_t batch, std::size_t n, std::size_t d,
                                const Call &call = Call()) const {
        if (tokens.size() != batch * n * d)
            throw Error(MC_USAGE, "compress: tokens.size() is not batch x n x d");
        return compress_raw(tokens.data(), dtype, batch, n, d, call);
    }

private:
    std::vector<float> compress_raw(const void *tokens, mc_dtype dtype, std::size_t batch,
                                    std::size_t n, std::size_t d, const Call &call) const {
        std::vector<float> out(batch * reduced_count(n, call) * d);
        mc_call_params params = call.params();
        std::size_t m = 0;
        check(mc_compress(handle_.get(), tokens, dtype, batch, n, d, &params, out.data(),
                          out.size(), &m),
              "mc_compress");
        return out;
    }

    struct Close {
        void operator()(mc_compressor *compressor) const { mc_close(compressor); }
    };
    std::unique_ptr<mc_compressor, Close> handle_;
};

}  // namespace metacompress
