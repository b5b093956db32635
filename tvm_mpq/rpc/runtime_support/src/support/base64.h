// tvm-mpq replacement for TVM's src/support/base64.h (not shipped in the wheel):
// standard base64 (RFC 4648, '=' padding) encoding/decoding streams, used for tensors in JSON.
#ifndef TVM_SUPPORT_BASE64_H_
#define TVM_SUPPORT_BASE64_H_

#include <tvm/ffi/error.h>
#include <tvm/support/io.h>

#include <cctype>
#include <cstdint>
#include <string>

namespace tvm {
namespace support {

namespace b64 {
inline const char* Alphabet() {
  return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}
/*! \brief 6-bit value of c, or -1 if c is not in the alphabet. */
inline int Value(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace b64

/*! \brief Decodes base64 text read from another stream. */
class Base64InStream : public Stream {
 public:
  explicit Base64InStream(Stream* src) : src_(src) {}
  using Stream::Read;
  using Stream::Write;

  /*! \brief Skip leading whitespace; call once before reading. */
  void InitPosition() {
    next_ = NextChar();
    while (next_ != kEnd && std::isspace(next_)) next_ = NextChar();
  }

  size_t Read(void* ptr, size_t size) final {
    unsigned char* out = static_cast<unsigned char*>(ptr);
    size_t n = 0;
    while (n < size) {
      if (nbits_ < 8 && !Refill()) break;
      nbits_ -= 8;
      out[n++] = static_cast<unsigned char>((acc_ >> nbits_) & 0xFF);
    }
    return n;
  }
  size_t Write(const void*, size_t) final {
    TVM_FFI_THROW(InternalError) << "Base64InStream is read-only";
    return 0;
  }

 private:
  static constexpr int kEnd = -1;

  int NextChar() {
    unsigned char c;
    return src_->Read(&c, 1) == 1 ? static_cast<int>(c) : kEnd;
  }
  /*! \brief Append one base64 digit (6 bits) to the accumulator; false at end/padding. */
  bool Refill() {
    while (nbits_ < 8) {
      if (next_ == kEnd || next_ == '=' || std::isspace(next_)) return false;
      int v = b64::Value(next_);
      TVM_FFI_ICHECK_GE(v, 0) << "invalid base64 character '" << static_cast<char>(next_) << "'";
      acc_ = ((acc_ << 6) | static_cast<uint32_t>(v)) & 0xFFFFFF;
      nbits_ += 6;
      next_ = NextChar();
    }
    return true;
  }

  Stream* src_;
  int next_{kEnd};
  uint32_t acc_{0};
  int nbits_{0};
};

/*! \brief Encodes bytes as base64 text into another stream; call Finish() at the end. */
class Base64OutStream : public Stream {
 public:
  explicit Base64OutStream(Stream* dst) : dst_(dst) {}
  using Stream::Read;
  using Stream::Write;

  size_t Write(const void* ptr, size_t size) final {
    const unsigned char* in = static_cast<const unsigned char*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      group_[ngroup_++] = in[i];
      if (ngroup_ == 3) EmitGroup();
    }
    return size;
  }
  size_t Read(void*, size_t) final {
    TVM_FFI_THROW(InternalError) << "Base64OutStream is write-only";
    return 0;
  }
  /*! \brief Encode the remaining 1-2 bytes with '=' padding and flush. */
  void Finish() {
    if (ngroup_ != 0) EmitGroup();
    if (!text_.empty()) dst_->Write(static_cast<const void*>(text_.data()), text_.size());
    text_.clear();
  }

 private:
  void EmitGroup() {
    const char* abc = b64::Alphabet();
    uint32_t v = (uint32_t{group_[0]} << 16) | (uint32_t{ngroup_ > 1 ? group_[1] : 0u} << 8) |
                 uint32_t{ngroup_ > 2 ? group_[2] : 0u};
    text_.push_back(abc[(v >> 18) & 63]);
    text_.push_back(abc[(v >> 12) & 63]);
    text_.push_back(ngroup_ > 1 ? abc[(v >> 6) & 63] : '=');
    text_.push_back(ngroup_ > 2 ? abc[v & 63] : '=');
    ngroup_ = 0;
    if (text_.size() >= 4096) {
      dst_->Write(static_cast<const void*>(text_.data()), text_.size());
      text_.clear();
    }
  }

  Stream* dst_;
  unsigned char group_[3]{};
  int ngroup_{0};
  std::string text_;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BASE64_H_
