// The rendezvous store of the addon's c10d groups. libtorch 1.13's TCPStore listens on every
// address of the machine whatever host it is given, and its server thread reads each request
// with blocking calls, so a client that sends one byte of a request and stops holds up every
// other client (no group can form). This store binds to the one address given and is driven by
// poll(): bytes are gathered per connection and a request runs only once it is whole; a
// connection that holds a partial request longer than the request timeout, sends a malformed or
// oversized request, or lets unread replies pile up is closed. Nothing else changes: groups use
// it through c10d::Store (PrefixStore → Gloo/NCCL rendezvous) exactly as they used TCPStore.
//
// Wire format (little-endian): a request is [u32 n][n bytes: u8 op, fields], a reply
// [u32 n][n bytes]; a string field is [u32 len][bytes]. GET and WAIT are answered when their
// keys exist (the client gives up after its timeout and drops the connection).

#include "store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>

namespace sf {
namespace {

enum Op : uint8_t { kSet = 1, kGet, kAdd, kCheck, kWait, kDelete, kNumKeys, kCompareSet };

constexpr size_t kMaxRequest = 64 << 20;   // a request larger than this closes the connection
constexpr size_t kMaxUnread = 64 << 20;    // replies a client does not read
constexpr size_t kMaxConnections = 1024;

using Clock = std::chrono::steady_clock;

void putU32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; i++) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t getU32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }
void putBytes(std::vector<uint8_t>& b, const void* p, size_t n) {
  putU32(b, static_cast<uint32_t>(n));
  const auto* c = static_cast<const uint8_t*>(p);
  b.insert(b.end(), c, c + n);
}
void putString(std::vector<uint8_t>& b, const std::string& s) { putBytes(b, s.data(), s.size()); }

// Reads the fields of one request; any overrun throws (the connection is closed).
struct Reader {
  const uint8_t* p;
  size_t n;
  uint8_t u8() {
    if (n < 1) throw std::runtime_error("short request");
    n--;
    return *p++;
  }
  uint32_t u32() {
    if (n < 4) throw std::runtime_error("short request");
    uint32_t v = getU32(p);
    p += 4;
    n -= 4;
    return v;
  }
  std::string str() {
    uint32_t len = u32();
    if (n < len) throw std::runtime_error("short request");
    std::string s(reinterpret_cast<const char*>(p), len);
    p += len;
    n -= len;
    return s;
  }
};

void setNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

struct Conn {
  int fd;
  std::vector<uint8_t> in, out;
  Clock::time_point partialSince;
  // A GET or WAIT waiting for its keys (at most one: the client waits for the reply).
  bool pending = false;
  uint8_t pendingOp = 0;
  std::vector<std::string> pendingKeys;
};

using Data = std::map<std::string, std::string>;

void reply(Conn& c, const std::string& payload) {
  putString(c.out, payload);
}

bool allPresent(const Data& d, const std::vector<std::string>& keys) {
  for (const auto& k : keys)
    if (!d.count(k)) return false;
  return true;
}

// Runs one whole request; a GET/WAIT whose keys are missing is left pending.
void execute(Conn& c, Data& d, Reader r) {
  uint8_t op = r.u8();
  if (std::getenv("SF_STORE_DEBUG")) std::fprintf(stderr, "store: fd %d op %d\n", c.fd, op);
  switch (op) {
    case kSet: {
      std::string k = r.str();
      d[k] = r.str();
      return reply(c, "");
    }
    case kGet:
    case kWait: {
      std::vector<std::string> keys;
      if (op == kGet) keys.push_back(r.str());
      else for (uint32_t i = 0, n = r.u32(); i < n; i++) keys.push_back(r.str());
      c.pending = true;
      c.pendingOp = op;
      c.pendingKeys = std::move(keys);
      return;
    }
    case kAdd: {
      std::string k = r.str();
      std::string v = r.str();
      if (v.size() != 8) throw std::runtime_error("bad add");
      int64_t inc;
      std::memcpy(&inc, v.data(), 8);
      auto it = d.find(k);
      int64_t cur = it == d.end() ? 0 : std::stoll(it->second);
      cur += inc;
      d[k] = std::to_string(cur);
      return reply(c, std::string(reinterpret_cast<const char*>(&cur), 8));
    }
    case kCheck: {
      std::vector<std::string> keys;
      for (uint32_t i = 0, n = r.u32(); i < n; i++) keys.push_back(r.str());
      return reply(c, std::string(1, allPresent(d, keys) ? 1 : 0));
    }
    case kDelete: {
      std::string k = r.str();
      return reply(c, std::string(1, d.erase(k) ? 1 : 0));
    }
    case kNumKeys: {
      int64_t n = static_cast<int64_t>(d.size());
      return reply(c, std::string(reinterpret_cast<const char*>(&n), 8));
    }
    case kCompareSet: {
      std::string k = r.str(), expected = r.str(), desired = r.str();
      auto it = d.find(k);
      if (it == d.end()) {
        if (expected.empty()) d[k] = desired;
        return reply(c, expected.empty() ? desired : expected);
      }
      if (it->second == expected) it->second = desired;
      return reply(c, it->second);
    }
    default:
      throw std::runtime_error("unknown op");
  }
}

void settle(Conn& c, const Data& d) {
  if (!c.pending || !allPresent(d, c.pendingKeys)) return;
  c.pending = false;
  reply(c, c.pendingOp == kGet ? d.at(c.pendingKeys[0]) : "");
  c.pendingKeys.clear();
}

// Runs the whole requests in c.in (none while one is pending); false: close the connection.
bool drain(Conn& c, Data& d) {
  size_t used = 0;
  while (!c.pending && c.in.size() - used >= 4) {
    uint32_t n = getU32(c.in.data() + used);
    if (n == 0 || n > kMaxRequest) return false;
    if (c.in.size() - used - 4 < n) break;
    try {
      execute(c, d, Reader{c.in.data() + used + 4, n});
    } catch (const std::exception&) {
      return false;
    }
    used += 4 + n;
  }
  if (used) {
    c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(used));
    c.partialSince = Clock::now();  // the rest (if any) is a new request: its clock starts now
  }
  return c.out.size() <= kMaxUnread;
}

int bindTo(const std::string& host, uint16_t port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) throw std::runtime_error("store: cannot resolve '" + host + "': " + gai_strerror(rc));
  std::string why = "no address";
  for (addrinfo* a = res; a; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 128) == 0) {
      freeaddrinfo(res);
      setNonBlocking(fd);
      return fd;
    }
    why = std::strerror(errno);
    close(fd);
  }
  freeaddrinfo(res);
  throw std::runtime_error("store: cannot listen on " + host + ":" + std::to_string(port) + ": " + why);
}

}  // namespace

StoreServer::StoreServer(const std::string& host, uint16_t port, std::chrono::milliseconds requestTimeout)
    : requestTimeout_(requestTimeout) {
  listenFd_ = bindTo(host, port);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(listenFd_, reinterpret_cast<sockaddr*>(&ss), &len);
  port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  wakeFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  thread_ = std::thread([this] { loop(); });
}

StoreServer::~StoreServer() {
  stop_ = true;
  uint64_t one = 1;
  if (write(wakeFd_, &one, sizeof one) < 0) {
  }
  if (thread_.joinable()) thread_.join();
  close(listenFd_);
  close(wakeFd_);
}

void StoreServer::loop() {
  Data data;
  std::vector<std::unique_ptr<Conn>> conns;
  std::vector<pollfd> fds;
  uint8_t buf[65536];
  while (!stop_) {
    fds.clear();
    fds.push_back({listenFd_, POLLIN, 0});
    fds.push_back({wakeFd_, POLLIN, 0});
    for (auto& c : conns) fds.push_back({c->fd, static_cast<short>(POLLIN | (c->out.empty() ? 0 : POLLOUT)), 0});
    poll(fds.data(), fds.size(), 100);
    if (stop_) break;
    if (fds[0].revents & POLLIN) {
      for (;;) {
        int fd = accept4(listenFd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        if (conns.size() >= kMaxConnections) {
          close(fd);
          continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns.push_back(std::make_unique<Conn>(Conn{fd, {}, {}, Clock::now()}));
      }
    }
    bool changed = false;
    const auto now = Clock::now();
    for (size_t i = 0; i < conns.size() && i + 2 < fds.size(); i++) {
      Conn& c = *conns[i];
      short ev = fds[i + 2].revents;
      bool ok = !(ev & (POLLERR | POLLNVAL));
      if (ok && (ev & (POLLIN | POLLHUP))) {
        ssize_t n = read(c.fd, buf, sizeof buf);
        if (n > 0) {
          if (c.in.empty()) c.partialSince = now;
          c.in.insert(c.in.end(), buf, buf + n);
          ok = drain(c, data);
          changed = true;
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          ok = false;
        }
      }
      if (ok && (ev & POLLOUT) && !c.out.empty()) {
        ssize_t n = write(c.fd, c.out.data(), c.out.size());
        if (n > 0) c.out.erase(c.out.begin(), c.out.begin() + n);
        else if (n < 0 && errno != EAGAIN && errno != EINTR) ok = false;
      }
      // a request begun and not finished within the timeout: a stalled or hostile client
      if (ok && !c.in.empty() && !c.pending && now - c.partialSince > requestTimeout_) {
        if (std::getenv("SF_STORE_DEBUG")) std::fprintf(stderr, "store: closing a connection holding %zu bytes of a request\n", c.in.size());
        ok = false;
      }
      if (!ok) {
        close(c.fd);
        c.fd = -1;
      }
    }
    conns.erase(std::remove_if(conns.begin(), conns.end(), [](const std::unique_ptr<Conn>& c) { return c->fd < 0; }),
                conns.end());
    // Any write may complete a pending GET/WAIT (cheap: a few connections per group).
    if (changed)
      for (auto& c : conns) {
        settle(*c, data);
        if (!c->pending && !c->in.empty() && !drain(*c, data)) {
          close(c->fd);
          c->fd = -1;
        }
      }
    conns.erase(std::remove_if(conns.begin(), conns.end(), [](const std::unique_ptr<Conn>& c) { return c->fd < 0; }),
                conns.end());
  }
  for (auto& c : conns) close(c->fd);
}

// ---------------------------------------------------------------- client

namespace {

int connectTo(const std::string& host, uint16_t port, Clock::time_point deadline) {
  std::string why = "timed out";
  while (Clock::now() < deadline) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) == 0) {
      for (addrinfo* a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
          freeaddrinfo(res);
          int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          return fd;
        }
        why = std::strerror(errno);
        close(fd);
      }
      freeaddrinfo(res);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  throw std::runtime_error("store " + host + ":" + std::to_string(port) + " unreachable: " + why);
}

// Sends or receives exactly n bytes before the deadline; false on failure or timeout.
bool transfer(int fd, uint8_t* p, size_t n, bool out, Clock::time_point deadline) {
  while (n) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd f{fd, static_cast<short>(out ? POLLOUT : POLLIN), 0};
    if (poll(&f, 1, static_cast<int>(std::min<int64_t>(left, 1000))) <= 0) continue;
    ssize_t k = out ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
    if (k <= 0) {
      if (k < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      return false;
    }
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

}  // namespace

StoreClient::StoreClient(const std::string& host, uint16_t port, std::chrono::milliseconds timeout)
    : c10d::Store(timeout), where_(host + ":" + std::to_string(port)) {
  fd_ = connectTo(host, port, Clock::now() + timeout);
}

StoreClient::~StoreClient() {
  if (fd_ >= 0) close(fd_);
}

std::vector<uint8_t> StoreClient::call(const std::vector<uint8_t>& request, std::chrono::milliseconds timeout) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) throw std::runtime_error("store " + where_ + ": connection lost earlier");
  auto deadline = Clock::now() + (timeout.count() > 0 ? timeout : std::chrono::hours(24 * 365));
  std::vector<uint8_t> frame;
  putU32(frame, static_cast<uint32_t>(request.size()));
  frame.insert(frame.end(), request.begin(), request.end());
  uint8_t head[4];
  bool ok = transfer(fd_, frame.data(), frame.size(), true, deadline) && transfer(fd_, head, 4, false, deadline);
  std::vector<uint8_t> body;
  if (ok) {
    body.resize(getU32(head));
    ok = transfer(fd_, body.data(), body.size(), false, deadline);
  }
  if (!ok) {
    // (a reply may still come: the connection is of no further use)
    close(fd_);
    fd_ = -1;
    throw std::runtime_error("store " + where_ + ": no reply within " + std::to_string(timeout.count()) + " ms");
  }
  return body;
}

namespace {
std::vector<uint8_t> request(Op op) { return {static_cast<uint8_t>(op)}; }
}  // namespace

void StoreClient::set(const std::string& key, const std::vector<uint8_t>& value) {
  auto r = request(kSet);
  putString(r, key);
  putBytes(r, value.data(), value.size());
  call(r, timeout_);
}

std::vector<uint8_t> StoreClient::compareSet(const std::string& key, const std::vector<uint8_t>& expected,
                                             const std::vector<uint8_t>& desired) {
  auto r = request(kCompareSet);
  putString(r, key);
  putBytes(r, expected.data(), expected.size());
  putBytes(r, desired.data(), desired.size());
  return call(r, timeout_);
}

std::vector<uint8_t> StoreClient::get(const std::string& key) {
  auto r = request(kGet);
  putString(r, key);
  return call(r, timeout_);
}

int64_t StoreClient::add(const std::string& key, int64_t value) {
  auto r = request(kAdd);
  putString(r, key);
  putBytes(r, &value, 8);
  auto v = call(r, timeout_);
  int64_t out = 0;
  if (v.size() == 8) std::memcpy(&out, v.data(), 8);
  return out;
}

bool StoreClient::deleteKey(const std::string& key) {
  auto r = request(kDelete);
  putString(r, key);
  auto v = call(r, timeout_);
  return !v.empty() && v[0];
}

bool StoreClient::check(const std::vector<std::string>& keys) {
  auto r = request(kCheck);
  putU32(r, static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) putString(r, k);
  auto v = call(r, timeout_);
  return !v.empty() && v[0];
}

int64_t StoreClient::getNumKeys() {
  auto v = call(request(kNumKeys), timeout_);
  int64_t out = 0;
  if (v.size() == 8) std::memcpy(&out, v.data(), 8);
  return out;
}

void StoreClient::wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }

void StoreClient::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  auto r = request(kWait);
  putU32(r, static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) putString(r, k);
  call(r, timeout);
}

}  // namespace sf
