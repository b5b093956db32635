// tvm-mpq replacement for TVM's src/support/bytes_io.h (not shipped in the wheel):
// support::Stream over an in-memory string.
#ifndef TVM_SUPPORT_BYTES_IO_H_
#define TVM_SUPPORT_BYTES_IO_H_

#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>

namespace tvm {
namespace support {

/*! \brief Reads from a borrowed byte string (which must outlive the stream). */
class BytesInStream : public Stream {
 public:
  explicit BytesInStream(std::string_view data) : data_(data) {}
  explicit BytesInStream(const std::string& data) : data_(data) {}
  explicit BytesInStream(const ffi::Bytes& data) : data_(data.data(), data.size()) {}
  using Stream::Read;
  using Stream::Write;
  size_t Read(void* ptr, size_t size) final {
    size_t n = std::min(size, data_.size() - pos_);
    if (n != 0) std::memcpy(ptr, data_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  size_t Write(const void*, size_t) final { return 0; }

 private:
  std::string_view data_;
  size_t pos_{0};
};

/*! \brief Appends to a borrowed std::string. */
class BytesOutStream : public Stream {
 public:
  explicit BytesOutStream(std::string* out) : out_(out) {}
  using Stream::Read;
  using Stream::Write;
  size_t Read(void*, size_t) final { return 0; }
  size_t Write(const void* ptr, size_t size) final {
    out_->append(static_cast<const char*>(ptr), size);
    return size;
  }

 private:
  std::string* out_;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BYTES_IO_H_
