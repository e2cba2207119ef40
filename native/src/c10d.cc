// c10d for the addon: a rendezvous store server (store.cc) that a worker hosts for its whole life, and process groups
// (Gloo on CPU; NCCL where libtorch has CUDA) that all-reduce a Float32Array in place.
//
// Threads. Nothing here blocks the JS thread. A store server starts on a libuv pool thread. Each
// process group has a thread of its own that runs the group's calls one after another in the
// order JS made them (collectives must be issued in the same order on every rank; a thread pool
// would not keep it): the rendezvous that creates the group, then each all-reduce, waiting for it
// to finish. Outcomes come back to JS through a thread-safe function that settles the call's
// promise. Closing a group only asks its thread to stop: it finishes the calls already made, then
// destroys the process group itself (c10d's destructors join threads and wait for pending work),
// so closing never blocks and is safe with work pending or after a failure.
//
// Compiled parts follow build.mjs's detection: USE_C10D_GLOO (libgloo-dev), USE_C10D_NCCL
// (libtorch with CUDA). With neither, only info() is exported and it says so.

#include "c10d.h"

#include <ATen/ATen.h>

#if defined(USE_C10D_GLOO) || defined(USE_C10D_NCCL)
#define SF_C10D 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "store.h"
#endif
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

// ---------------------------------------------------------------- N-API helpers

std::string firstLine(const std::string& s) { return s.substr(0, s.find('\n')); }

// c10 errors carry a C++ backtrace after the message; JS gets the message's first line.
std::string describe(const std::exception& e) {
  const auto* c = dynamic_cast<const c10::Error*>(&e);
  return firstLine(c != nullptr ? c->what_without_backtrace() : e.what());
}

napi_value jsError(napi_env env, const std::string& message) {
  napi_value msg, err;
  napi_create_string_utf8(env, message.c_str(), message.size(), &msg);
  napi_create_error(env, nullptr, msg, &err);
  return err;
}

// Runs an N-API callback body; a C++ exception becomes a thrown JS Error of one line.
template <typename Fn>
napi_value guarded(napi_env env, Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    napi_throw(env, jsError(env, describe(e)));
  }
  return nullptr;
}

napi_value boolean(napi_env env, bool b) {
  napi_value v;
  napi_get_boolean(env, b, &v);
  return v;
}

#ifdef SF_C10D

napi_value undefinedValue(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

std::vector<napi_value> args(napi_env env, napi_callback_info info, size_t n) {
  std::vector<napi_value> argv(n);
  size_t argc = n;
  napi_get_cb_info(env, info, &argc, argv.data(), nullptr, nullptr);
  if (argc < n) throw std::invalid_argument("expected " + std::to_string(n) + " arguments, got " + std::to_string(argc));
  return argv;
}

std::string stringArg(napi_env env, napi_value v) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, nullptr, 0, &len) != napi_ok) throw std::invalid_argument("expected a string");
  std::string s(len, '\0');
  napi_get_value_string_utf8(env, v, &s[0], len + 1, &len);
  return s;
}

int64_t intArg(napi_env env, napi_value v) {
  int64_t r = 0;
  if (napi_get_value_int64(env, v, &r) != napi_ok) throw std::invalid_argument("expected a number");
  return r;
}

template <typename T>
T* externalArg(napi_env env, napi_value v) {
  void* p = nullptr;
  if (napi_get_value_external(env, v, &p) != napi_ok || p == nullptr) throw std::invalid_argument("expected a c10d handle");
  return static_cast<T*>(p);
}

// ---------------------------------------------------------------- exit guard

// Work on our threads that must not overlap the teardown of the JS environment: N-API calls (Node
// frees thread-safe functions then) and c10d destructors (libtorch's static destructors run soon
// after, and a process group destroyed under them crashed the exit). A cleanup hook closes the
// guard, after waiting for a section under way; later sections are skipped.
class ExitGuard {
 public:
  // Call on the JS thread, after creating any thread-safe function the sections use: cleanup hooks
  // run last-registered first, so this one runs before Node frees that function. The hook stays
  // registered until the environment ends (a few bytes per group or server).
  static std::shared_ptr<ExitGuard> make(napi_env env) {
    auto g = std::make_shared<ExitGuard>();
    napi_add_env_cleanup_hook(env, [](void* arg) {
      std::unique_ptr<std::shared_ptr<ExitGuard>> p(static_cast<std::shared_ptr<ExitGuard>*>(arg));
      (*p)->close();
    }, new std::shared_ptr<ExitGuard>(g));
    return g;
  }

  // Runs fn unless the environment is being torn down; returns whether it ran.
  template <typename Fn>
  bool run(Fn&& fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return false;
      ++busy_;
    }
    fn();
    std::lock_guard<std::mutex> lock(mu_);
    --busy_;
    cv_.notify_all();
    return true;
  }

 private:
  void close() {
    std::unique_lock<std::mutex> lock(mu_);
    closed_ = true;
    cv_.wait_for(lock, std::chrono::seconds(5), [&] { return busy_ == 0; });
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false;
  int busy_ = 0;
};

// Destroys `p` on a thread of its own (c10d objects join threads and wait on sockets as they go),
// unless the environment is being torn down: then it is left for the process's exit.
template <typename T>
void destroyOffThread(std::unique_ptr<T> p, std::shared_ptr<ExitGuard> guard) {
  std::thread([q = std::move(p), guard]() mutable {
    if (!guard->run([&] { q.reset(); })) q.release();
  }).detach();
}

// ---------------------------------------------------------------- store server

// The rendezvous store (store.cc): bound to `host` only, a stalled client holds up no one.
struct Server {
  std::unique_ptr<sf::StoreServer> store;
  std::shared_ptr<ExitGuard> guard;
};

struct ListenJob {
  napi_async_work work = nullptr;
  napi_deferred deferred = nullptr;
  std::string host;
  uint16_t port = 0;
  std::chrono::milliseconds requestTimeout{0};
  std::unique_ptr<Server> server;
  std::string error;
};

void destroyServer(std::unique_ptr<Server> s) {
  auto guard = s->guard;
  if (s->store) destroyOffThread(std::move(s), guard);
}

void finalizeServer(napi_env, void* data, void*) { destroyServer(std::unique_ptr<Server>(static_cast<Server*>(data))); }

void listenExecute(napi_env, void* data) {
  auto* j = static_cast<ListenJob*>(data);
  try {
    // port 0: the kernel picks a free one, which port() reports
    j->server.reset(new Server{std::make_unique<sf::StoreServer>(j->host, j->port, j->requestTimeout), nullptr});
  } catch (const std::exception& e) {
    j->error = describe(e);
  }
}

void listenComplete(napi_env env, napi_status, void* data) {
  std::unique_ptr<ListenJob> j(static_cast<ListenJob*>(data));
  napi_delete_async_work(env, j->work);
  if (!j->error.empty()) {
    napi_reject_deferred(env, j->deferred, jsError(env, j->error));
    return;
  }
  j->server->guard = ExitGuard::make(env);
  napi_value handle;
  napi_create_external(env, j->server.release(), finalizeServer, nullptr, &handle);
  napi_resolve_deferred(env, j->deferred, handle);
}

// listen(host, port, requestTimeoutMs): Promise<handle> of a store server.
napi_value Listen(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    auto a = args(env, info, 3);
    auto j = std::make_unique<ListenJob>();
    j->host = stringArg(env, a[0]);
    j->port = static_cast<uint16_t>(intArg(env, a[1]));
    j->requestTimeout = std::chrono::milliseconds(intArg(env, a[2]));
    napi_value promise, name;
    napi_create_promise(env, &j->deferred, &promise);
    napi_create_string_utf8(env, "c10d.listen", NAPI_AUTO_LENGTH, &name);
    napi_create_async_work(env, nullptr, name, listenExecute, listenComplete, j.get(), &j->work);
    napi_queue_async_work(env, j->work);
    j.release();  // listenComplete owns it now
    return promise;
  });
}

// storePort(handle): the port the server listens on.
napi_value StorePort(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    auto* s = externalArg<Server>(env, args(env, info, 1)[0]);
    if (!s->store) throw std::invalid_argument("the store server is closed");
    napi_value v;
    napi_create_uint32(env, s->store->port(), &v);
    return v;
  });
}

// storeClose(handle): stops the server (on a thread of its own); closing twice is harmless.
napi_value StoreClose(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    auto* s = externalArg<Server>(env, args(env, info, 1)[0]);
    destroyServer(std::make_unique<Server>(Server{std::move(s->store), s->guard}));
    return undefinedValue(env);
  });
}

// ---------------------------------------------------------------- process groups

struct GroupSpec {
  std::string backend, host, prefix, iface;
  uint16_t port;
  int rank, world;
  std::chrono::milliseconds timeout;
  int device;  // nccl: CUDA device index, -1 for the current one
};

using Allreduce = std::function<c10::intrusive_ptr<c10d::Work>(std::vector<at::Tensor>&)>;

// One JS call: its job for the group's thread and the promise it settles.
struct Call {
  std::function<void()> job;  // throws on failure
  napi_deferred deferred = nullptr;
  napi_ref keep = nullptr;     // kept alive until the job is done (the buffer; the group's handle)
  bool resolveWithKept = false;
  std::string error;           // the job's failure; empty: success
};

// The JS end of a group's thread. Touched on the JS thread only; freed by the thread-safe
// function's finaliser, after the last outcome is delivered.
struct Courier {
  napi_threadsafe_function tsfn = nullptr;
  int inFlight = 0;  // calls not yet settled; while > 0 the tsfn keeps Node's event loop alive
};

struct Group {
  GroupSpec spec;
  Courier* courier = nullptr;
  std::shared_ptr<ExitGuard> guard;  // around the tsfn calls and the process group's destruction
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Call*> queue;
  bool closing = false;
  // The group's thread alone touches these.
  Allreduce allreduce;
  c10::Device device{c10::kCPU};
};

// What a JS handle holds; empty once closed.
struct Handle {
  std::shared_ptr<Group> group;
};

void requestClose(Group& g) {
  {
    std::lock_guard<std::mutex> lock(g.mu);
    g.closing = true;
  }
  g.cv.notify_one();
}

#ifdef USE_C10D_GLOO
// The address this machine reaches `host` from: a UDP socket connected there (which sends
// nothing) gets the local address the routing table picks. For a store on this machine that is
// the store's own address (127.0.0.1 for 127.0.0.1); across machines, ours on that network.
std::string localAddressToward(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return host;
  std::string out = host;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, SOCK_DGRAM, 0);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    char buf[INET6_ADDRSTRLEN];
    const bool ok = connect(fd, a->ai_addr, a->ai_addrlen) == 0 && getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
    const void* ip = local.ss_family == AF_INET6 ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr)
                                                 : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr);
    close(fd);
    if (ok && inet_ntop(local.ss_family, ip, buf, sizeof buf) != nullptr) {
      out = buf;
      break;
    }
  }
  freeaddrinfo(res);
  return out;
}

// Gloo's transport endpoint: `iface` as a network interface name, else as a hostname or address;
// by default the address this machine reaches the store from.
std::shared_ptr<::gloo::transport::Device> glooDevice(const GroupSpec& s) {
  using PG = c10d::ProcessGroupGloo;
  if (s.iface.empty()) return PG::createDeviceForHostname(localAddressToward(s.host, s.port));
  if (if_nametoindex(s.iface.c_str()) != 0) return PG::createDeviceForInterface(s.iface);
  return PG::createDeviceForHostname(s.iface);
}

Allreduce makeGloo(const c10::intrusive_ptr<c10d::Store>& store, const GroupSpec& s) {
  auto opts = c10d::ProcessGroupGloo::Options::create(s.timeout);
  opts->devices.push_back(glooDevice(s));
  opts->threads = 1;  // the group's thread issues one collective at a time
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, s.rank, s.world, opts);
  return [pg](std::vector<at::Tensor>& t) { return pg->allreduce(t); };
}
#endif

#ifdef USE_C10D_NCCL
Allreduce makeNccl(const c10::intrusive_ptr<c10d::Store>& store, const GroupSpec& s) {
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = s.timeout;
  auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, s.rank, s.world, opts);
  return [pg](std::vector<at::Tensor>& t) { return pg->allreduce(t); };
}

// NCCL reduces device memory: copy in, all-reduce on NCCL's stream, copy back. Without
// NCCL_BLOCKING_WAIT its work never times out by itself, so poll it up to the group's timeout.
void allreduceCuda(Group& g, const at::Tensor& host) {
  c10::cuda::CUDAGuard guard(g.device);
  at::Tensor dev = host.to(g.device);
  std::vector<at::Tensor> t{dev};
  auto work = g.allreduce(t);
  const auto deadline = std::chrono::steady_clock::now() + g.spec.timeout;
  while (!work->isCompleted()) {
    if (std::chrono::steady_clock::now() > deadline) {
      throw std::runtime_error("NCCL all-reduce timed out after " + std::to_string(g.spec.timeout.count()) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  work->wait();  // rethrows the work's error; orders this thread's stream after NCCL's
  host.copy_(dev);
}
#endif

// The rendezvous: every rank connects to rank 0's store, under the group's prefix, and waits for
// the others (up to the timeout) while the back-end connects its mesh.
void createOn(Group& g) {
  const GroupSpec& s = g.spec;
  auto client = c10::make_intrusive<sf::StoreClient>(s.host, s.port, s.timeout);
  auto store = c10::make_intrusive<c10d::PrefixStore>(s.prefix, client);
#ifdef USE_C10D_GLOO
  if (s.backend == "gloo") g.allreduce = makeGloo(store, s);
#endif
#ifdef USE_C10D_NCCL
  if (s.backend == "nccl") {
    g.device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(s.device >= 0 ? s.device : c10::cuda::current_device()));
    g.allreduce = makeNccl(store, s);
  }
#endif
  if (!g.allreduce) throw std::invalid_argument("c10d back-end '" + s.backend + "' is not compiled in");
}

// Sum over the group of `n` floats at `data`, written back in place. from_blob wraps the JS
// buffer without a copy; the call's reference keeps that buffer alive until this returns.
void allreduceOn(Group& g, float* data, int64_t n) {
  at::Tensor host = at::from_blob(data, {n}, at::kFloat);
#ifdef USE_C10D_NCCL
  if (g.device.is_cuda()) return allreduceCuda(g, host);
#endif
  std::vector<at::Tensor> t{host};
  g.allreduce(t)->wait();  // throws on a timeout or a peer gone
}

// The group's thread: runs calls in order until closed, then destroys the process group.
void serve(std::shared_ptr<Group> g) {
  for (;;) {
    Call* c = nullptr;
    {
      std::unique_lock<std::mutex> lock(g->mu);
      g->cv.wait(lock, [&] { return !g->queue.empty() || g->closing; });
      if (g->queue.empty()) break;
      c = g->queue.front();
      g->queue.pop_front();
    }
    try {
      c->job();
    } catch (const std::exception& e) {
      c->error = describe(e);
    }
    if (!g->allreduce) requestClose(*g);  // the rendezvous failed: nothing can follow it
    bool sent = false;
    g->guard->run([&] { sent = napi_call_threadsafe_function(g->courier->tsfn, c, napi_tsfn_blocking) == napi_ok; });
    if (!sent) delete c;  // the environment is gone: no promise to settle
  }
  // The process group's destructor runs here, after its last call; at the environment's
  // teardown the group is left to the process's exit instead.
  if (!g->guard->run([&] { g->allreduce = nullptr; })) static_cast<void>(new Allreduce(std::move(g->allreduce)));  // leaked on purpose
  g->guard->run([&] { napi_release_threadsafe_function(g->courier->tsfn, napi_tsfn_release); });
}

// On the JS thread: settles a call's promise with its outcome.
void deliver(napi_env env, napi_value, void* context, void* data) {
  std::unique_ptr<Call> c(static_cast<Call*>(data));
  auto* courier = static_cast<Courier*>(context);
  if (env == nullptr) return;  // the environment is being torn down: no promise to settle
  napi_value kept = undefinedValue(env);
  if (c->keep != nullptr) {
    napi_get_reference_value(env, c->keep, &kept);
    napi_delete_reference(env, c->keep);
  }
  if (!c->error.empty()) {
    napi_reject_deferred(env, c->deferred, jsError(env, c->error));
  } else {
    napi_resolve_deferred(env, c->deferred, c->resolveWithKept ? kept : undefinedValue(env));
  }
  if (--courier->inFlight == 0) napi_unref_threadsafe_function(env, courier->tsfn);
}

void finalizeCourier(napi_env, void* data, void*) { delete static_cast<Courier*>(data); }

// Queues a call on the group's thread; returns its promise.
napi_value submit(napi_env env, Group& g, std::function<void()> job, napi_value keep, bool resolveWithKept) {
  auto* c = new Call{std::move(job), nullptr, nullptr, resolveWithKept, {}};
  napi_value promise;
  napi_create_promise(env, &c->deferred, &promise);
  napi_create_reference(env, keep, 1, &c->keep);
  if (g.courier->inFlight++ == 0) napi_ref_threadsafe_function(env, g.courier->tsfn);
  {
    std::lock_guard<std::mutex> lock(g.mu);
    g.queue.push_back(c);
  }
  g.cv.notify_one();
  return promise;
}

void finalizeHandle(napi_env, void* data, void*) {
  std::unique_ptr<Handle> h(static_cast<Handle*>(data));
  if (h->group) requestClose(*h->group);  // collected without close(): close it now
}

GroupSpec specArgs(napi_env env, const std::vector<napi_value>& a) {
  GroupSpec s;
  s.backend = stringArg(env, a[0]);
  s.host = stringArg(env, a[1]);
  s.port = static_cast<uint16_t>(intArg(env, a[2]));
  s.prefix = stringArg(env, a[3]);
  s.rank = static_cast<int>(intArg(env, a[4]));
  s.world = static_cast<int>(intArg(env, a[5]));
  s.timeout = std::chrono::milliseconds(intArg(env, a[6]));
  s.iface = stringArg(env, a[7]);
  s.device = static_cast<int>(intArg(env, a[8]));
  if (s.world < 1 || s.rank < 0 || s.rank >= s.world) throw std::invalid_argument("rank must be in [0, world size)");
  return s;
}

// create(backend, host, port, prefix, rank, world, timeoutMs, iface, device): Promise<handle>,
// settled when every rank has arrived (or the timeout passed).
napi_value Create(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    auto g = std::make_shared<Group>();
    g->spec = specArgs(env, args(env, info, 9));
    g->courier = new Courier();
    napi_value name;
    napi_create_string_utf8(env, "c10d.group", NAPI_AUTO_LENGTH, &name);
    if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, g->courier, finalizeCourier, g->courier, deliver,
                                        &g->courier->tsfn) != napi_ok) {
      delete g->courier;
      throw std::runtime_error("could not create the group's thread-safe function");
    }
    napi_unref_threadsafe_function(env, g->courier->tsfn);  // submit() refs it while calls are in flight
    g->guard = ExitGuard::make(env);
    auto* h = new Handle{g};
    napi_value handle;
    napi_create_external(env, h, finalizeHandle, nullptr, &handle);
    Group* gp = g.get();
    std::thread(serve, g).detach();
    return submit(env, *gp, [gp] { createOn(*gp); }, handle, true);
  });
}

// allreduce(handle, values: Float32Array): Promise<void>; sums in place over the group.
napi_value AllreduceFn(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    auto a = args(env, info, 2);
    auto* h = externalArg<Handle>(env, a[0]);
    if (!h->group) throw std::invalid_argument("the process group is closed");
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    if (napi_get_typedarray_info(env, a[1], &type, &length, &data, nullptr, nullptr) != napi_ok || type != napi_float32_array) {
      throw std::invalid_argument("allreduce takes a Float32Array");
    }
    Group* g = h->group.get();
    auto* values = static_cast<float*>(data);
    const auto n = static_cast<int64_t>(length);
    return submit(env, *g, [g, values, n] { allreduceOn(*g, values, n); }, a[1], false);
  });
}

// close(handle): the group's thread finishes the calls made, then destroys the group.
napi_value Close(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    auto* h = externalArg<Handle>(env, args(env, info, 1)[0]);
    if (h->group) requestClose(*h->group);
    h->group.reset();
    return undefinedValue(env);
  });
}

#endif  // SF_C10D

// info(): { gloo, nccl }: the back-ends compiled in.
napi_value Info(napi_env env, napi_callback_info) {
  return guarded(env, [&]() -> napi_value {
    napi_value o;
    napi_create_object(env, &o);
#ifdef USE_C10D_GLOO
    napi_set_named_property(env, o, "gloo", boolean(env, true));
#else
    napi_set_named_property(env, o, "gloo", boolean(env, false));
#endif
#ifdef USE_C10D_NCCL
    napi_set_named_property(env, o, "nccl", boolean(env, true));
#else
    napi_set_named_property(env, o, "nccl", boolean(env, false));
#endif
    return o;
  });
}

}  // namespace

namespace sf {

napi_status registerC10d(napi_env env, napi_value exports) {
  const struct {
    const char* name;
    napi_callback cb;
  } fns[] = {
      {"info", Info},
#ifdef SF_C10D
      {"listen", Listen}, {"storePort", StorePort}, {"storeClose", StoreClose},
      {"create", Create}, {"allreduce", AllreduceFn}, {"close", Close},
#endif
  };
  napi_value c10d;
  napi_status st = napi_create_object(env, &c10d);
  for (const auto& f : fns) {
    napi_value fn;
    if (st == napi_ok) st = napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.cb, nullptr, &fn);
    if (st == napi_ok) st = napi_set_named_property(env, c10d, f.name, fn);
  }
  return st == napi_ok ? napi_set_named_property(env, exports, "c10d", c10d) : st;
}

}  // namespace sf
