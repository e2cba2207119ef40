// The rendezvous store of the addon's c10d groups (see store.cc): a key-value server bound to one
// address, and the c10d::Store client that process groups use.
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sf {

// A store server on `host`:`port` (0: any free port) only. One thread polls every connection;
// a request is acted on only once all its bytes are in, so a slow or stalled client delays no
// one else, and a connection holding a partial request for longer than `requestTimeout` (or
// sending a malformed or oversized one) is closed.
class StoreServer {
 public:
  StoreServer(const std::string& host, uint16_t port, std::chrono::milliseconds requestTimeout);
  ~StoreServer();  // stops the thread and closes every socket
  uint16_t port() const { return port_; }

 private:
  void loop();
  int listenFd_ = -1;
  int wakeFd_ = -1;
  uint16_t port_ = 0;
  std::chrono::milliseconds requestTimeout_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// The client: a blocking connection to a StoreServer; every call waits at most the store's
// timeout (wait() the one it is given).
class StoreClient : public c10d::Store {
 public:
  StoreClient(const std::string& host, uint16_t port, std::chrono::milliseconds timeout);
  ~StoreClient() override;
  void set(const std::string& key, const std::vector<uint8_t>& value) override;
  std::vector<uint8_t> compareSet(const std::string& key, const std::vector<uint8_t>& expected,
                                  const std::vector<uint8_t>& desired) override;
  std::vector<uint8_t> get(const std::string& key) override;
  int64_t add(const std::string& key, int64_t value) override;
  bool deleteKey(const std::string& key) override;
  bool check(const std::vector<std::string>& keys) override;
  int64_t getNumKeys() override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  std::vector<uint8_t> call(const std::vector<uint8_t>& request, std::chrono::milliseconds timeout);
  std::mutex mu_;
  int fd_ = -1;
  std::string where_;
};

}  // namespace sf
