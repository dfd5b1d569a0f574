// A model call from Python: the GIL is released, then the model's lock taken.
#pragma once
#include <pybind11/pybind11.h>

#include <mutex>

namespace fastlm {
namespace bindings {

// Releases the GIL, then takes the model's lock (in that order, so a thread
// waiting for the model never holds the GIL).
struct Exclusive {
  pybind11::gil_scoped_release nogil;
  std::lock_guard<std::mutex> lock;
  explicit Exclusive(std::mutex& m) : nogil(), lock(m) {}
};

}  // namespace bindings
}  // namespace fastlm
