#include "cuda/runtime.h"
#include "out_of_memory.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <stdexcept>

namespace fastlm {
namespace cuda {

namespace {

struct Probe {
  bool ok = false;
  bool pools = false;  // stream-ordered allocator supported
  std::string reason;
};

const Probe& probe() {
  static Probe p;
  static std::once_flag once;
  std::call_once(once, [] {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      p.reason = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(e);
      (void)cudaGetLastError();  // not sticky, but leave a clean slate
      return;
    }
    if (n == 0) {
      p.reason = "no CUDA device found";
      return;
    }
    int dev = 0, pools = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev) != cudaSuccess) {
      p.reason = "cannot query the current CUDA device";
      (void)cudaGetLastError();
      return;
    }
    p.pools = pools != 0;
    if (p.pools) {
      // Keep freed blocks in the pool (as PyTorch's caching allocator does)
      // rather than returning them to the driver at every synchronisation.
      cudaMemPool_t pool;
      if (cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
        uint64_t threshold = UINT64_MAX;
        (void)cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
      }
      (void)cudaGetLastError();
    }
    p.ok = true;
  });
  return p;
}

// The stream this thread captures on (null: none, launches go to the legacy stream).
thread_local cudaStream_t t_capture = nullptr;

bool sync_after_launch() {
  static const bool on = [] {
    const char* s = std::getenv("FASTLM_CUDA_SYNC");
    return s && *s && std::strcmp(s, "0") != 0;
  }();
  return on;
}

}  // namespace

bool pointwise_next() {
  static const bool on = [] {
    const char* s = std::getenv("FASTLM_CUDA_POINTWISE");
    if (!s || !*s || std::strcmp(s, "default") == 0) return false;
    if (std::strcmp(s, "next") == 0) return true;
    throw std::invalid_argument(std::string("FASTLM_CUDA_POINTWISE must be 'next' or 'default', got '") +
                                s + "'");
  }();
  return on;
}

bool available() { return probe().ok; }

std::string unavailable_reason() { return probe().ok ? std::string() : probe().reason; }

void require() {
  if (!available())
    throw std::runtime_error("fastlm: CUDA is not available (" + unavailable_reason() +
                             "); use NumPy arrays to run on the CPU");
}

void check(int err, const char* what) {
  if (err != cudaSuccess) {
    const cudaError_t e = static_cast<cudaError_t>(err);
    throw std::runtime_error(std::string("fastlm CUDA error in ") + what + ": " +
                             cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")");
  }
}

void check_launch(const char* kernel) {
  cudaError_t e = cudaGetLastError();
  // A capture records launches without running them (and may not synchronise).
  if (e == cudaSuccess && sync_after_launch() && !t_capture) e = cudaDeviceSynchronize();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("fastlm CUDA kernel ") + kernel +
                             " failed: " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) +
                             ")");
}

int device_count() {
  if (!available()) return 0;
  int n = 0;
  check(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
  return n;
}

int current_device() {
  require();
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  return dev;
}

std::string device_name() {
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, current_device()), "cudaGetDeviceProperties");
  return prop.name;
}

std::string compute_capability() {
  const int dev = current_device();
  int major = 0, minor = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
        "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev),
        "cudaDeviceGetAttribute");
  return std::to_string(major) + "." + std::to_string(minor);
}

int multiprocessor_count() {
  const int dev = current_device();
  int n = 0;
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  return n;
}

namespace {

// Bytes fastlm holds on the GPU now and at most since the last reset: the
// size of every live block is kept, as a free does not say it.
struct Usage {
  std::mutex mu;
  std::unordered_map<void*, size_t> blocks;
  size_t now = 0, peak = 0;
};

Usage& usage() {
  static Usage* u = new Usage;  // outlives the last free at exit
  return *u;
}

}  // namespace

void* malloc_device(size_t bytes) {
  if (bytes == 0) return nullptr;
  require();
  void* p = nullptr;
  const cudaError_t e = probe().pools ? cudaMallocAsync(&p, bytes, t_capture) : cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // out of memory is not sticky; keep it from the next check
    throw OutOfMemory("a GPU buffer", (int64_t)bytes, 1, "GPU memory", cudaGetErrorString(e));
  }
  Usage& u = usage();
  std::lock_guard<std::mutex> lock(u.mu);
  u.blocks[p] = bytes;
  u.now += bytes;
  u.peak = std::max(u.peak, u.now);
  return p;
}

void free_device(void* p) noexcept {
  if (!p) return;
  {
    Usage& u = usage();
    std::lock_guard<std::mutex> lock(u.mu);
    auto it = u.blocks.find(p);
    if (it != u.blocks.end()) u.now -= it->second, u.blocks.erase(it);
  }
  if (probe().pools)
    (void)cudaFreeAsync(p, t_capture);
  else
    (void)cudaFree(p);
}

MemoryUsage memory_usage(bool reset_peak) {
  Usage& u = usage();
  std::lock_guard<std::mutex> lock(u.mu);
  const MemoryUsage r{u.now, u.peak};
  if (reset_peak) u.peak = u.now;
  return r;
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "copy to device");
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy to host");
}

void copy_device(void* dst, const void* src, size_t bytes) {
  if (bytes)
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, t_capture), "device-to-device copy");
}

void zero_device(void* p, size_t bytes) {
  if (bytes) check(cudaMemsetAsync(p, 0, bytes, t_capture), "cudaMemsetAsync");
}

void* current_stream() { return t_capture; }

void synchronize() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

void wait_stream(uintptr_t stream) {
  check(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

int pointer_device(const void* p) {
  cudaPointerAttributes attr;
  const cudaError_t e = cudaPointerGetAttributes(&attr, p);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) return attr.device;
  return -1;
}

namespace {

struct StepGraph {
  cudaStream_t stream = nullptr;
  cudaEvent_t before = nullptr, after = nullptr;
  cudaGraphExec_t exec = nullptr;
};

std::mutex graph_count_mu;
GraphCounts graph_count{0, 0, 0};

void count(int64_t GraphCounts::*field) {
  std::lock_guard<std::mutex> lock(graph_count_mu);
  ++(graph_count.*field);
}

}  // namespace

bool graphs_enabled() {
  static const bool on = [] {
    const char* s = std::getenv("FASTLM_CUDA_GRAPHS");
    return s && std::strcmp(s, "1") == 0 && available() && probe().pools;
  }();
  return on;
}

GraphCounts graph_counts() {
  std::lock_guard<std::mutex> lock(graph_count_mu);
  return graph_count;
}

void graph_begin(void** graph) {
  if (t_capture) throw std::logic_error("graph_begin: this thread is already capturing");
  auto* g = static_cast<StepGraph*>(*graph);
  if (!g) {
    auto fresh = std::make_unique<StepGraph>();
    check(cudaStreamCreateWithFlags(&fresh->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    cudaError_t e = cudaEventCreateWithFlags(&fresh->before, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&fresh->after, cudaEventDisableTiming);
    if (e != cudaSuccess) {
      graph_release(fresh.release());
      check(e, "cudaEventCreate");
    }
    *graph = g = fresh.release();
  }
  check(cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeThreadLocal),
        "cudaStreamBeginCapture");
  t_capture = g->stream;
}

void graph_end(void** graph, bool launch) {
  auto* g = static_cast<StepGraph*>(*graph);
  t_capture = nullptr;
  cudaGraph_t captured = nullptr;
  const cudaError_t e = cudaStreamEndCapture(g->stream, &captured);
  if (!launch || e != cudaSuccess) {
    if (captured) (void)cudaGraphDestroy(captured);
    (void)cudaGetLastError();
    if (launch) check(e, "cudaStreamEndCapture");
    return;
  }
  struct Destroy {
    cudaGraph_t g;
    ~Destroy() { (void)cudaGraphDestroy(g); }
  } destroy{captured};
  count(&GraphCounts::captures);
  if (g->exec) {
    cudaGraphExecUpdateResultInfo info;
    if (cudaGraphExecUpdate(g->exec, captured, &info) == cudaSuccess) {
      count(&GraphCounts::updates);
    } else {  // another sequence of launches: a new instance
      (void)cudaGetLastError();
      check(cudaStreamSynchronize(g->stream), "cudaStreamSynchronize");
      (void)cudaGraphExecDestroy(g->exec);
      g->exec = nullptr;
    }
  }
  if (!g->exec) {
    check(cudaGraphInstantiate(&g->exec, captured, 0), "cudaGraphInstantiate");
    count(&GraphCounts::instantiations);
  }
  // After the work queued before on the legacy stream, and before what follows.
  check(cudaEventRecord(g->before, cudaStreamLegacy), "cudaEventRecord");
  check(cudaStreamWaitEvent(g->stream, g->before, 0), "cudaStreamWaitEvent");
  check(cudaGraphLaunch(g->exec, g->stream), "cudaGraphLaunch");
  check(cudaEventRecord(g->after, g->stream), "cudaEventRecord");
  check(cudaStreamWaitEvent(cudaStreamLegacy, g->after, 0), "cudaStreamWaitEvent");
  check_launch("the decode step's CUDA graph");
}

void graph_release(void* graph) noexcept {
  auto* g = static_cast<StepGraph*>(graph);
  if (!g) return;
  if (g->stream) (void)cudaStreamSynchronize(g->stream);
  if (g->exec) (void)cudaGraphExecDestroy(g->exec);
  if (g->before) (void)cudaEventDestroy(g->before);
  if (g->after) (void)cudaEventDestroy(g->after);
  if (g->stream) (void)cudaStreamDestroy(g->stream);
  (void)cudaGetLastError();
  delete g;
}

}  // namespace cuda
}  // namespace fastlm
