// tvm-mpq replacement for TVM's src/support/socket.h (not shipped in the wheel):
// a thin POSIX TCP socket (Linux/macOS only) with the calls the RPC runtime and our
// rpc_server.cc use. Copyable handle; Close() is explicit.
#ifndef TVM_SUPPORT_SOCKET_H_
#define TVM_SUPPORT_SOCKET_H_

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <tvm/ffi/error.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

/*! \brief An IPv4/IPv6 address resolved from host name and port. */
class SockAddr {
 public:
  SockAddr() { std::memset(&addr_, 0, sizeof(addr_)); }
  SockAddr(const char* host, int port) : SockAddr() { Set(host, port); }

  /*! \brief Resolve host (name or numeric) and set port; throws if it does not resolve. */
  void Set(const char* host, int port) {
    addrinfo hints;
    std::memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    std::string service = std::to_string(port);
    int rc = getaddrinfo(host, service.c_str(), &hints, &res);
    if (rc != 0 || res == nullptr) {
      TVM_FFI_THROW(RuntimeError) << "cannot resolve " << host << ": " << gai_strerror(rc);
    }
    std::memcpy(&addr_, res->ai_addr, res->ai_addrlen);
    len_ = res->ai_addrlen;
    freeaddrinfo(res);
  }
  int ss_family() const { return addr_.ss_family; }
  const sockaddr* addr() const { return reinterpret_cast<const sockaddr*>(&addr_); }
  sockaddr* addr() { return reinterpret_cast<sockaddr*>(&addr_); }
  socklen_t len() const { return len_; }
  socklen_t* mutable_len() { return &len_; }
  int port() const {
    if (addr_.ss_family == AF_INET6) {
      return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr_)->sin6_port);
    }
    return ntohs(reinterpret_cast<const sockaddr_in*>(&addr_)->sin_port);
  }
  /*! \brief "host:port" (IPv6 hosts in brackets). */
  std::string AsString() const {
    char buf[INET6_ADDRSTRLEN] = {0};
    const void* src = addr_.ss_family == AF_INET6
                          ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(&addr_)->sin6_addr)
                          : static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(&addr_)->sin_addr);
    inet_ntop(addr_.ss_family, src, buf, sizeof(buf));
    std::string host(buf);
    if (addr_.ss_family == AF_INET6) host = "[" + host + "]";
    return host + ":" + std::to_string(port());
  }

 private:
  sockaddr_storage addr_;
  socklen_t len_{sizeof(sockaddr_storage)};
};

/*! \brief Base of socket handles: holds the file descriptor. */
class Socket {
 public:
  using SockType = int;
  static constexpr SockType kInvalid = -1;

  explicit Socket(SockType fd = kInvalid) : sockfd(fd) {}
  SockType sockfd;

  /*! \brief Throw the last socket error (errno) prefixed with where. */
  [[noreturn]] static void Error(const char* where) {
    int err = errno;
    TVM_FFI_THROW(RuntimeError) << "Socket " << where << " error: " << std::strerror(err);
    throw;  // unreachable
  }
  bool BadSocket() const { return sockfd == kInvalid; }
  bool IsClosed() const { return BadSocket(); }
  void Close() {
    if (sockfd != kInvalid) {
      ::close(sockfd);
      sockfd = kInvalid;
    }
  }
  void SetReuseAddr() {
    int one = 1;
    setsockopt(sockfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  }
  /*! \brief Bind to addr; returns false if the port is taken. */
  bool Bind(const SockAddr& addr) { return ::bind(sockfd, addr.addr(), addr.len()) == 0; }
};

/*! \brief A TCP stream socket. */
class TCPSocket : public Socket {
 public:
  TCPSocket() = default;
  explicit TCPSocket(SockType fd) : Socket(fd) {}

  /*! \brief Open a new socket of the address family (AF_INET/AF_INET6). */
  void Create(int family = AF_INET) {
    sockfd = ::socket(family, SOCK_STREAM, 0);
    if (sockfd == kInvalid) Error("Create");
  }
  void SetNoDelay() {
    int one = 1;
    setsockopt(sockfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  bool Connect(const SockAddr& addr) { return ::connect(sockfd, addr.addr(), addr.len()) == 0; }
  void Listen(int backlog = 16) {
    if (::listen(sockfd, backlog) != 0) Error("Listen");
  }
  TCPSocket Accept(SockAddr* peer = nullptr) {
    SockAddr tmp;
    SockAddr* p = peer != nullptr ? peer : &tmp;
    SockType fd;
    do {
      fd = ::accept(sockfd, p->addr(), p->mutable_len());
    } while (fd == kInvalid && errno == EINTR);
    if (fd == kInvalid) Error("Accept");
    return TCPSocket(fd);
  }
  /*! \brief One send() call (EINTR retried); -1 on error. */
  ssize_t Send(const void* buf, size_t len, int flags = 0) {
    ssize_t n;
    do {
      n = ::send(sockfd, buf, len, flags | MSG_NOSIGNAL);
    } while (n == -1 && errno == EINTR);
    return n;
  }
  /*! \brief One recv() call (EINTR retried); 0 at end of stream, -1 on error. */
  ssize_t Recv(void* buf, size_t len, int flags = 0) {
    ssize_t n;
    do {
      n = ::recv(sockfd, buf, len, flags);
    } while (n == -1 && errno == EINTR);
    return n;
  }
  /*! \brief Send all len bytes; throws on error. */
  size_t SendAll(const void* buf, size_t len) {
    const char* p = static_cast<const char*>(buf);
    size_t done = 0;
    while (done < len) {
      ssize_t n = Send(p + done, len - done);
      if (n == -1) Error("SendAll");
      done += static_cast<size_t>(n);
    }
    return done;
  }
  /*! \brief Receive len bytes; returns fewer only if the peer closed; throws on error. */
  size_t RecvAll(void* buf, size_t len) {
    char* p = static_cast<char*>(buf);
    size_t done = 0;
    while (done < len) {
      ssize_t n = Recv(p + done, len - done);
      if (n == -1) Error("RecvAll");
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  }
  /*! \brief Send a length-prefixed (int32) string. */
  void SendBytes(const std::string& s) {
    int32_t n = static_cast<int32_t>(s.size());
    SendAll(&n, sizeof(n));
    if (n != 0) SendAll(s.data(), s.size());
  }
  /*! \brief Receive a length-prefixed (int32) string; throws if the peer closed early. */
  std::string RecvBytes() {
    int32_t n = 0;
    if (RecvAll(&n, sizeof(n)) != sizeof(n) || n < 0) Error("RecvBytes");
    std::string s(static_cast<size_t>(n), '\0');
    if (n != 0 && RecvAll(s.data(), s.size()) != s.size()) Error("RecvBytes");
    return s;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SOCKET_H_
