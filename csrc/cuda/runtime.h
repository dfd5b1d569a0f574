// The CUDA runtime as fastlm uses it: device query, memory, errors. Plain C++
// (no CUDA headers) so that the bindings, compiled by the host compiler, can
// include it.
//
// Everything runs on the legacy default stream of the current device (device
// 0 unless the process chose another): kernels, copies and the stream-ordered
// allocations below, so consecutive ops are ordered without events, and work
// on other blocking streams (PyTorch's and CuPy's default streams) is ordered
// with ours by the legacy stream's implicit synchronisation. The one
// exception is a decode step captured as a CUDA graph (StepGraph below): its
// launches are recorded on a capture stream, and the graph is launched
// between two events that order it with the legacy stream.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace fastlm {
namespace cuda {

// Whether a CUDA device and a driver recent enough for this build are present.
// Never throws; the answer is computed once per process.
bool available();
// Why available() is false ("" when it is true).
std::string unavailable_reason();
// Throws std::runtime_error naming the reason unless available().
void require();

int device_count();
std::string device_name();
// "major.minor" of the current device.
std::string compute_capability();
int multiprocessor_count();

// Throws std::runtime_error "<what>: <cudaGetErrorString>" when err != 0
// (err is a cudaError_t).
void check(int err, const char* what);
// Called after every kernel launch: a launch error (bad configuration, a
// fault of an earlier kernel) becomes std::runtime_error naming `kernel`.
// With FASTLM_CUDA_SYNC=1 in the environment it also synchronises, so that an
// asynchronous fault is reported by the kernel that caused it (debugging,
// compute-sanitizer runs).
void check_launch(const char* kernel);

// FASTLM_CUDA_POINTWISE=next (read once per process): the opt-in memory-bound
// kernels (LayerNorm forward and backward, GELU forward) and, in the bf16
// table, the fused classifier + cross-entropy, until a GPU run has passed
// their tests. Unset or "default": the checked kernels; anything else throws
// std::invalid_argument naming the variable.
bool pointwise_next();

// The stream (a cudaStream_t) this thread's launches, copies and scratch
// allocations go to: the legacy default stream (null), or while this thread
// captures a StepGraph, its capture stream. Every launch passes it.
void* current_stream();

// Device memory, allocated and freed in order on the default stream (a
// caching pool: no device-wide synchronisation per allocation). malloc of 0
// bytes returns nullptr; free of nullptr does nothing.
void* malloc_device(size_t bytes);
void free_device(void* p) noexcept;
// Bytes of GPU memory fastlm holds (malloc_device minus free_device) now,
// and the most since the process started or the last reset_peak.
struct MemoryUsage {
  size_t now, peak;
};
MemoryUsage memory_usage(bool reset_peak = false);
// Blocking copies (they wait for earlier work on the default stream; a fault
// of an earlier kernel surfaces here as std::runtime_error).
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
// Ordered on the default stream, asynchronous to the host.
void copy_device(void* dst, const void* src, size_t bytes);
void zero_device(void* p, size_t bytes);
void synchronize();
// Blocks the host until a foreign stream (a cudaStream_t given as an integer,
// as __cuda_array_interface__ v3 does) has finished its queued work.
void wait_stream(uintptr_t stream);
// The device ordinal a pointer's memory lives on, or -1 when the GPU cannot
// address it (host memory that is not registered or managed).
int pointer_device(const void* p);
int current_device();

// Scratch memory for one op, released in stream order when it goes out of
// scope (the kernels that use it are already queued before it).
class Scratch {
 public:
  explicit Scratch(size_t bytes) : p_(malloc_device(bytes)) {}
  ~Scratch() { free_device(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_;
};

// CUDA graphs for the per-token decode step, opt-in with FASTLM_CUDA_GRAPHS=1
// (read once per process; needs the stream-ordered allocator). A step's
// launches are captured (cudaStreamCaptureModeThreadLocal) on a stream of the
// graph's own; the first capture is instantiated and every later one updates
// that instance in place (cudaGraphExecUpdate: the kernels' arguments, such as
// the position and the cache length, change from token to token, the launches
// do not), or instantiates it again when the update is refused (a different
// sequence of launches). Nothing between begin and end may synchronise with
// the host (no upload or download; scratch allocations become graph nodes).
bool graphs_enabled();
// A graph's state, owned through an opaque pointer by the model that replays
// it (null until its first step).
void graph_begin(void** graph);
// Ends the capture begun on this thread; when `launch`, runs the step (after
// the work queued before on the legacy stream, and before the work queued
// after it), else discards it (an exception between begin and end). Throws
// std::runtime_error for a capture that failed.
void graph_end(void** graph, bool launch);
void graph_release(void* graph) noexcept;
// How often graph_end instantiated and updated graphs since the process
// started (the tests' and the benchmark's view of whether graphs run).
struct GraphCounts {
  int64_t captures, instantiations, updates;
};
GraphCounts graph_counts();

}  // namespace cuda
}  // namespace fastlm
