// tvm-mpq replacement for TVM's src/support/ring_buffer.h (not shipped in the wheel).
// The RPC endpoint's byte queue: a contiguous buffer [head_, tail_) that is compacted to
// the front when it needs room (instead of wrapping), so each callback gets one span.
#ifndef TVM_SUPPORT_RING_BUFFER_H_
#define TVM_SUPPORT_RING_BUFFER_H_

#include <tvm/ffi/error.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  RingBuffer() : buf_(kInitBytes) {}

  /*! \brief Bytes queued and not yet read. */
  size_t bytes_available() const { return tail_ - head_; }

  /*! \brief Make room so that n bytes in total can be queued without reallocating. */
  void Reserve(size_t n) {
    if (head_ != 0 && head_ + n > buf_.size()) Compact();
    if (n > buf_.size()) buf_.resize(std::max(n, buf_.size() * 2));
  }

  /*! \brief Pop exactly size bytes into data (they must be available). */
  void Read(void* data, size_t size) {
    TVM_FFI_ICHECK_LE(size, bytes_available()) << "RingBuffer: read past the queued bytes";
    if (size != 0) std::memcpy(data, buf_.data() + head_, size);
    Consume(size);
  }

  /*! \brief Push size bytes. */
  void Write(const void* data, size_t size) {
    Reserve(bytes_available() + size);
    if (size != 0) std::memcpy(buf_.data() + tail_, data, size);
    tail_ += size;
  }

  /*! \brief Hand up to max_nbytes queued bytes to fsend(ptr, n) -> sent; pop what it took. */
  template <typename FSend>
  size_t ReadWithCallback(FSend fsend, size_t max_nbytes) {
    size_t n = std::min(max_nbytes, bytes_available());
    TVM_FFI_ICHECK_NE(n, 0U) << "RingBuffer: nothing to send";
    size_t sent = fsend(static_cast<const void*>(buf_.data() + head_), n);
    Consume(sent);
    return sent;
  }

  /*! \brief Let frecv(ptr, n) -> received fill up to max_nbytes; queue what it wrote. */
  template <typename FRecv>
  size_t WriteWithCallback(FRecv frecv, size_t max_nbytes) {
    Reserve(bytes_available() + max_nbytes);
    size_t got = frecv(static_cast<void*>(buf_.data() + tail_), max_nbytes);
    tail_ += got;
    return got;
  }

 private:
  static constexpr size_t kInitBytes = 4096;

  void Consume(size_t n) {
    head_ += n;
    if (head_ == tail_) head_ = tail_ = 0;
  }
  void Compact() {
    size_t n = bytes_available();
    if (n != 0) std::memmove(buf_.data(), buf_.data() + head_, n);
    head_ = 0;
    tail_ = n;
  }

  std::vector<char> buf_;
  size_t head_{0};
  size_t tail_{0};
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_RING_BUFFER_H_
