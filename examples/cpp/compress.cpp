// The C example (examples/c/compress.c) in C++ through the RAII wrapper metacompress.hpp:
//
//   compress IN.f32 N D OUT.f32 [--weights W] [--method M] [--keep K] [--layout PRESET]
//                               [--backend B]
//
// Build (after cargo build --release at the repository's root), on one line:
//   c++ -std=c++17 -I include -I examples/cpp examples/cpp/compress.cpp
//       -L target/release -lmetacompress -Wl,-rpath,$PWD/target/release -o compress

#include "metacompress.hpp"

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

int main(int argc, char **argv) try {
    if (argc < 5 || (argc - 5) % 2 != 0) {
        std::cerr << "usage: compress IN.f32 N D OUT.f32 [--weights W] [--method M] "
                     "[--keep K] [--layout PRESET] [--backend B]\n";
        return 2;
    }
    const std::size_t n = std::strtoull(argv[2], nullptr, 10);
    const std::size_t d = std::strtoull(argv[3], nullptr, 10);
    std::string weights, backend = "auto";
    metacompress::Call call;
    for (int i = 5; i < argc; i += 2) {
        const std::string flag = argv[i], value = argv[i + 1];
        if (flag == "--weights") weights = value;
        else if (flag == "--method") call.method = value;
        else if (flag == "--keep") call.keep = std::strtod(value.c_str(), nullptr);
        else if (flag == "--layout") {
            std::size_t preset_n = 0;
            call.grids = metacompress::layout(value, &preset_n);
            if (preset_n != n) {
                std::cerr << "compress: " << value << " describes " << preset_n
                          << " tokens per image; the file has " << n << "\n";
                return 2;
            }
        } else if (flag == "--backend") backend = value;
        else {
            std::cerr << "compress: unknown option " << flag << "\n";
            return 2;
        }
    }

    std::ifstream in(argv[1], std::ios::binary);
    if (!in) {
        std::cerr << "compress: cannot open " << argv[1] << "\n";
        return 1;
    }
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::size_t per_image = n * d * sizeof(float);
    if (n == 0 || d == 0 || bytes.empty() || bytes.size() % per_image != 0) {
        std::cerr << "compress: " << argv[1] << " is not a whole number of " << n << " x " << d
                  << " f32 images\n";
        return 2;
    }
    const std::size_t batch = bytes.size() / per_image;
    std::vector<float> tokens(bytes.size() / sizeof(float));
    std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char *>(tokens.data()));

    const metacompress::Compressor compressor(weights, backend);
    std::cerr << "compress: running on " << compressor.device() << "\n";
    const std::vector<float> reduced = compressor.compress(tokens, batch, n, d, call);
    std::cerr << "compress: " << batch << " image(s) of " << n << " tokens -> "
              << compressor.reduced_count(n, call) << " tokens each\n";

    std::ofstream out(argv[4], std::ios::binary);
    out.write(reinterpret_cast<const char *>(reduced.data()),
              static_cast<std::streamsize>(reduced.size() * sizeof(float)));
    return out ? 0 : 1;
} catch (const metacompress::Error &error) {
    std::cerr << "compress: " << error.what() << "\n";
    return error.status;
}
