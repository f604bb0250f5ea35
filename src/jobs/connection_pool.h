// Idle database connections of one kind, opened on demand up to a limit.
#ifndef KEEL_JOBS_CONNECTION_POOL_H_
#define KEEL_JOBS_CONNECTION_POOL_H_

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "keel/status.h"

namespace keel::jobs {

// Thread-safe; each connection is used by one thread at a time. Conn needs
// `bool healthy() const`: an unhealthy connection is closed, not reused.
// Must outlive every With() call.
template <typename Conn>
class ConnectionPool {
 public:
  using Opener = std::function<Result<std::unique_ptr<Conn>>()>;

  ConnectionPool(Opener open, size_t max_size) : open_(std::move(open)), max_size_(max_size) {}

  // Runs fn(Conn&) on an idle connection, opening one if fewer than
  // max_size exist, else waiting for one. Returns what fn returns, or the
  // error from opening a connection.
  template <typename Fn>
  auto With(Fn fn) -> decltype(fn(std::declval<Conn&>())) {
    std::unique_ptr<Conn> conn;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return !idle_.empty() || size_ < max_size_; });
      if (!idle_.empty()) {
        conn = std::move(idle_.back());
        idle_.pop_back();
      } else {
        ++size_;
      }
    }
    if (conn == nullptr) {
      Result<std::unique_ptr<Conn>> opened = open_();
      if (!opened) {
        Release(nullptr);
        return tl::unexpected(opened.error());
      }
      conn = std::move(*opened);
    }
    auto result = fn(*conn);
    Release(conn->healthy() ? std::move(conn) : nullptr);
    return result;
  }

 private:
  // Returns a connection to the pool; null gives up its slot.
  void Release(std::unique_ptr<Conn> conn) {
    {
      std::lock_guard lock(mu_);
      if (conn != nullptr) {
        idle_.push_back(std::move(conn));
      } else {
        --size_;
      }
    }
    cv_.notify_one();
  }

  const Opener open_;
  const size_t max_size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Conn>> idle_;
  size_t size_ = 0;  // open connections, idle or in use
};

}  // namespace keel::jobs

#endif  // KEEL_JOBS_CONNECTION_POOL_H_
