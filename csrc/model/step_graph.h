// A decode step's kernels recorded into the model's CUDA graph and run at
// end(), where the backend replays graphs (Kernels::graph_begin: CUDA with
// FASTLM_CUDA_GRAPHS=1); a plain sequence of launches elsewhere, or when
// `graph` is null. Nothing between construction and end() may upload,
// download or allocate a model buffer.
#pragma once
#include "kernels.h"

namespace fastlm {

class StepGraph {
 public:
  // graph: the model's handle (null before its first step), or null for no graph.
  StepGraph(const Kernels& k, void** graph) : k_(k), graph_(k.graph_begin ? graph : nullptr) {
    if (graph_) k_.graph_begin(graph_);
  }
  void end() {
    void** g = graph_;
    graph_ = nullptr;
    if (g) k_.graph_end(g, true);
  }
  ~StepGraph() {
    if (graph_) k_.graph_end(graph_, false);
  }
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

 private:
  const Kernels& k_;
  void** graph_;
};

// Frees a model's graph handle (null: nothing).
inline void release_step_graph(const Kernels& k, void* graph) {
  if (graph && k.graph_release) k.graph_release(graph);
}

}  // namespace fastlm
