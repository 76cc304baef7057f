#!/usr/bin/env bash
# Issue 3's real-GPU measurements in one command, for a machine lent by the device tool
# (NVIDIA, no Rust toolchain, no Vulkan loader). Prepare here, once:
#   echo /.gl/ >> .git/info/exclude; mkdir -p .gl /tmp/amd64/partial
#   o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
#   apt-get $o update; (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
#   cargo build --release
# then run `bash bench/gpu_session.sh` there with carry [".gl", "target/release/metacompress"].
# Results land in $OUT (metacompress bench JSON in f32, f16 and f16-acc, the PyTorch forward's
# JSON, and side-by-side.txt, the table of all of them printed last).
set -uo pipefail
out="${OUT:-bench/results}"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
bin=target/release/metacompress
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee "$out/nvidia-smi.txt"
"$bin" devices | tee "$out/devices.txt"
# Register-tiled and shared-memory kernels, each with split-K as chosen (auto) and without.
"$bin" bench --workload all --backend vulkan --shared --split-k auto,off --runs 20 --json "$out/metacompress-f32.json" | tee "$out/metacompress-f32.txt"
"$bin" bench --workload all --backend vulkan --shared --split-k auto,off --precision f16 --runs 20 --json "$out/metacompress-f16.json" | tee "$out/metacompress-f16.txt"
"$bin" bench --workload all --backend vulkan --skip-naive --precision f16-acc --runs 20 --json "$out/metacompress-f16-acc.json" | tee "$out/metacompress-f16-acc.txt"
PYTHONUNBUFFERED=1 python3 bench/torch_forward.py --runs 20 --json "$out/torch.json" | tee "$out/torch.txt"
python3 bench/side_by_side.py --bench "$out/metacompress-f32.json" --bench "$out/metacompress-f16.json" \
    --bench "$out/metacompress-f16-acc.json" --torch "$out/torch.json" | tee "$out/side-by-side.txt"
