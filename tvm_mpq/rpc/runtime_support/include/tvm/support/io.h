// tvm-mpq replacement for TVM's <tvm/support/io.h> (not shipped in the wheel).
// A byte stream with typed Read/Write dispatched to Serializer<T> (see serializer.h).
#ifndef TVM_SUPPORT_IO_H_
#define TVM_SUPPORT_IO_H_

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace tvm {
namespace support {

/*! \brief Binary (de)serializer for T; specialised in serializer.h and by runtime headers. */
template <typename T, typename Enable = void>
struct Serializer {
  static constexpr bool enabled = false;
};

/*! \brief Abstract byte stream. */
class Stream {
 public:
  virtual ~Stream() = default;
  /*! \brief Read up to size bytes; returns the number read. */
  virtual size_t Read(void* ptr, size_t size) = 0;
  /*! \brief Write size bytes; returns the number written. */
  virtual size_t Write(const void* ptr, size_t size) = 0;

  template <typename T>
  void Write(const T& value) {
    static_assert(Serializer<T>::enabled, "type has no tvm::support::Serializer");
    Serializer<T>::Write(this, value);
  }
  template <typename T>
  bool Read(T* out) {
    static_assert(Serializer<T>::enabled, "type has no tvm::support::Serializer");
    return Serializer<T>::Read(this, out);
  }
  // Scalars are stored in native little-endian order (serializer.h checks the target is
  // little-endian), so arrays of them move as one block.
  template <typename T>
  void WriteArray(const T* values, size_t n) {
    if constexpr (std::is_arithmetic_v<T>) {
      if (n != 0) Write(static_cast<const void*>(values), n * sizeof(T));
    } else {
      for (size_t i = 0; i < n; ++i) Write<T>(values[i]);
    }
  }
  template <typename T>
  bool ReadArray(T* out, size_t n) {
    if constexpr (std::is_arithmetic_v<T>) {
      return n == 0 || ReadFull(out, n * sizeof(T));
    } else {
      for (size_t i = 0; i < n; ++i) {
        if (!Read<T>(out + i)) return false;
      }
      return true;
    }
  }
  /*! \brief Read exactly size bytes (looping over short reads); false at end of stream. */
  bool ReadFull(void* ptr, size_t size) {
    char* p = static_cast<char*>(ptr);
    while (size != 0) {
      size_t n = Read(static_cast<void*>(p), size);
      if (n == 0) return false;
      p += n;
      size -= n;
    }
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_IO_H_
