// Which kernel table a model or an op runs on: its device (and a model's
// precision) decide.
#pragma once
#include <string>

#include "kernels.h"

namespace fastlm {
namespace bindings {

// Where an op's arrays live: host memory (NumPy), the GPU, or the emulated
// device (host memory that the emulated allocator hands out as device memory).
enum class Device { kCpu, kCuda, kEmulated };

// The float32 table of `device`: the active CPU ISA's, the CUDA table
// (RuntimeError naming `op` without a usable GPU or without CUDA compiled in),
// or the emulated device's (the active ISA's kernels over emulated memory).
const Kernels& backend_for(const char* op, Device device);

// Whether [p, p + bytes) lies inside one live block of the emulated device.
bool emulated_owns(const void* p, int64_t bytes);

// The table of a model on `device` ("cpu" or "cuda") computing its GEMMs in
// `precision` ("fp32", "bf16"; "tf32" on "cuda" only). With
// FASTLM_EMULATE_CUDA=1 in the environment (read on every call), "cuda" is
// the emulated device: the CPU kernels over host memory that a checked
// allocator hands out as device memory and that only upload / download
// cross, so the whole device path of the models and bindings runs without a
// GPU (tests/README). ValueError / RuntimeError (via pybind11) naming `op`
// for a precision or device this build or machine cannot run.
const Kernels& model_backend(const char* op, const std::string& device,
                             const std::string& precision);

// Whether FASTLM_EMULATE_CUDA=1 is set now.
bool cuda_emulated();

}  // namespace bindings
}  // namespace fastlm
