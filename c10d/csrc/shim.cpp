// The C side of face2simpson-c10d: libtorch's own c10d (TCPStore, ProcessGroupGloo and, where
// the CUDA libtorch and NCCL's headers were found at build time, ProcessGroupNCCL) behind a
// handful of extern "C" functions. Every C++ exception stops here and comes back to Rust as a
// message: an exception crossing an extern "C" boundary would abort the process.
//
// Tensors travel as tch's `C_tensor` pointers, which are `at::Tensor*` (tch-sys's torch_api.h).

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/exception.h>
#ifdef F2S_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

// What a call returns: kind F2S_OK and no message, or an error and its malloc'd message (freed by
// f2s_c10d_free_message).
struct F2sError {
  int32_t kind;
  char* message;
};

namespace {

// What went wrong, so the Rust side can tell a timeout from a peer that went away.
enum F2sKind : int32_t {
  F2S_OK = 0,
  F2S_TIMEOUT = 1,
  F2S_NETWORK = 2,
  F2S_OTHER = 3,
};

char* copy_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

// c10::Error's what() carries a C++ backtrace; the message alone is what a log wants.
std::string message_of(const std::exception& e) {
  if (auto* c = dynamic_cast<const c10::Error*>(&e)) {
    return c->what_without_backtrace();
  }
  return e.what();
}

int32_t kind_of(const std::exception& e, const std::string& message) {
  if (dynamic_cast<const c10d::TimeoutError*>(&e) != nullptr ||
      message.find("imed out") != std::string::npos ||
      message.find("imeout") != std::string::npos) {
    return F2S_TIMEOUT;
  }
  if (dynamic_cast<const c10::DistNetworkError*>(&e) != nullptr ||
      message.find("onnection") != std::string::npos) {
    return F2S_NETWORK;
  }
  return F2S_OTHER;
}

template <typename F>
F2sError guarded(F&& f) {
  try {
    f();
    return {F2S_OK, nullptr};
  } catch (const std::exception& e) {
    std::string message = message_of(e);
    return {kind_of(e, message), copy_string(message)};
  } catch (...) {
    return {F2S_OTHER, copy_string("unknown C++ exception")};
  }
}

std::vector<at::Tensor> tensors_of(at::Tensor* const* tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    // A shallow handle: collectives write into the caller's storage in place.
    out.push_back(*tensors[i]);
  }
  return out;
}

}  // namespace

// A process group and the store it met its peers through (the store must outlive the group).
struct F2sGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  bool avg_native;
  int world;
};

extern "C" {

// Backends, as the Rust enum numbers them.
enum : int32_t { F2S_GLOO = 0, F2S_NCCL_BACKEND = 1 };
// Reductions.
enum : int32_t { F2S_SUM = 0, F2S_AVG = 1, F2S_MAX = 2 };

int32_t f2s_c10d_has_nccl() {
#ifdef F2S_NCCL
  return 1;
#else
  return 0;
#endif
}

void f2s_c10d_free_message(char* message) { std::free(message); }

// Rank 0 serves the TCPStore on `port` and waits for every rank; the others connect to it,
// retrying until `timeout_ms`. `gloo_interface` (a network interface name) or `gloo_hostname`
// (an address this rank listens on) choose Gloo's transport address; both null uses the
// address the machine's hostname resolves to.
F2sError f2s_c10d_group_new(
    int32_t backend,
    const char* master_addr,
    uint16_t master_port,
    int32_t rank,
    int32_t world,
    int64_t timeout_ms,
    const char* gloo_interface,
    const char* gloo_hostname,
    F2sGroup** out) {
  *out = nullptr;
  return guarded([&] {
    const std::chrono::milliseconds timeout(timeout_ms);
    c10d::TCPStoreOptions store_options;
    store_options.port = master_port;
    store_options.isServer = rank == 0;
    store_options.numWorkers = static_cast<size_t>(world);
    store_options.waitWorkers = true;
    store_options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), store_options);
    auto group = new F2sGroup{store, {}, false, world};
    try {
      if (backend == F2S_GLOO) {
        auto options = c10d::ProcessGroupGloo::Options::create(timeout);
        if (gloo_interface != nullptr) {
          options->devices.push_back(
              c10d::ProcessGroupGloo::createDeviceForInterface(gloo_interface));
        } else if (gloo_hostname != nullptr) {
          options->devices.push_back(
              c10d::ProcessGroupGloo::createDeviceForHostname(gloo_hostname));
        } else {
          options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        }
        group->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
        // Gloo has no AVG reduction: sum, then divide (below).
        group->avg_native = false;
      } else if (backend == F2S_NCCL_BACKEND) {
#ifdef F2S_NCCL
        // PyTorch's defaults: wait() only orders the caller's CUDA stream after the
        // collective (the host does not block), and NCCL's watchdog enforces the timeout by
        // aborting the process. TORCH_NCCL_BLOCKING_WAIT=1 in the environment makes wait()
        // block and throw instead, at the cost of a host sync per collective.
        auto options = c10d::ProcessGroupNCCL::Options::create();
        options->timeout = timeout;
        group->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
        group->avg_native = true;
#else
        throw std::runtime_error(
            "this build has no NCCL: it was compiled without the CUDA libtorch and NCCL's headers");
#endif
      } else {
        throw std::runtime_error("unknown backend " + std::to_string(backend));
      }
    } catch (...) {
      delete group;
      throw;
    }
    *out = group;
  });
}

void f2s_c10d_group_free(F2sGroup* group) { delete group; }

// In place on every tensor; each must have the same shape, type and device on every rank.
F2sError f2s_c10d_allreduce(F2sGroup* group, at::Tensor* const* tensors, size_t n, int32_t op) {
  return guarded([&] {
    auto list = tensors_of(tensors, n);
    c10d::AllreduceOptions options;
    switch (op) {
      case F2S_SUM:
        options.reduceOp = c10d::ReduceOp::SUM;
        break;
      case F2S_AVG:
        options.reduceOp = group->avg_native ? c10d::ReduceOp::AVG : c10d::ReduceOp::SUM;
        break;
      case F2S_MAX:
        options.reduceOp = c10d::ReduceOp::MAX;
        break;
      default:
        throw std::runtime_error("unknown reduction " + std::to_string(op));
    }
    // One tensor per call: Gloo's allreduce takes a list only for several devices of one rank.
    for (auto& t : list) {
      std::vector<at::Tensor> one{t};
      group->backend->allreduce(one, options)->wait();
      if (op == F2S_AVG && !group->avg_native) {
        t.div_(group->world);
      }
    }
  });
}

F2sError f2s_c10d_broadcast(F2sGroup* group, at::Tensor* const* tensors, size_t n, int32_t root) {
  return guarded([&] {
    auto list = tensors_of(tensors, n);
    c10d::BroadcastOptions options;
    options.rootRank = root;
    for (auto& t : list) {
      std::vector<at::Tensor> one{t};
      group->backend->broadcast(one, options)->wait();
    }
  });
}

F2sError f2s_c10d_barrier(F2sGroup* group) {
  return guarded([&] { group->backend->barrier(c10d::BarrierOptions())->wait(); });
}

}  // extern "C"
