#!/usr/bin/env bash
# Installs the CUDA compiler and static runtime into a manylinux_2_28 build
# container (AlmaLinux 8), for cibuildwheel's before-all. Only what the build
# needs: nvcc (with its headers) and libcudart_static; no driver, no math
# libraries. FASTLM_CUDA_VERSION picks the toolkit (default 13.0).
set -euo pipefail
version="${FASTLM_CUDA_VERSION:-13.0}"
if [[ "$(uname -m)" != x86_64 ]]; then
  echo "install_cuda_manylinux: no CUDA toolkit for $(uname -m) builds" >&2
  exit 0
fi
dnf install -y dnf-plugins-core
dnf config-manager --add-repo https://developer.download.nvidia.com/compute/cuda/repos/rhel8/x86_64/cuda-rhel8.repo
dnf install -y --setopt=install_weak_deps=False "cuda-nvcc-${version/./-}" "cuda-cudart-devel-${version/./-}"
ln -sfn "/usr/local/cuda-$version" /usr/local/cuda
/usr/local/cuda/bin/nvcc --version
