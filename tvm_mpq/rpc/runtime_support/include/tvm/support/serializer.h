// tvm-mpq replacement for TVM's <tvm/support/serializer.h> (not shipped in the wheel).
// Wire format (as TVM's host side writes it): scalars little-endian in their native width,
// enums as their underlying type, strings/arrays/vectors/maps as a uint64 count followed by
// the elements, DLDataType as (u8 code, u8 bits, u16 lanes), DLDevice as (i32 type, i32 id).
#ifndef TVM_SUPPORT_SERIALIZER_H_
#define TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tvm-mpq runtime_support serializer assumes a little-endian target"
#endif

namespace tvm {
namespace support {

namespace detail {
inline void WriteCount(Stream* s, size_t n) {
  uint64_t v = static_cast<uint64_t>(n);
  s->Write(static_cast<const void*>(&v), sizeof(v));
}
inline bool ReadCount(Stream* s, uint64_t* n) { return s->ReadFull(n, sizeof(*n)); }
inline bool ReadBytes(Stream* s, std::string* out) {
  uint64_t n = 0;
  if (!ReadCount(s, &n)) return false;
  out->resize(static_cast<size_t>(n));
  return n == 0 || s->ReadFull(out->data(), out->size());
}
// maps (std::unordered_map, ffi::Map): a count, then that many (key, value) pairs
template <typename K, typename V, typename M>
void WriteMap(Stream* s, const M& m) {
  WriteCount(s, m.size());
  for (const auto& kv : m) {
    Serializer<K>::Write(s, kv.first);
    Serializer<V>::Write(s, kv.second);
  }
}
// reads the pairs, handing each to add(key, value)
template <typename K, typename V, typename Add>
bool ReadMap(Stream* s, Add add) {
  uint64_t n = 0;
  if (!ReadCount(s, &n)) return false;
  for (uint64_t i = 0; i < n; ++i) {
    K k;
    V v;
    if (!Serializer<K>::Read(s, &k) || !Serializer<V>::Read(s, &v)) return false;
    add(std::move(k), std::move(v));
  }
  return true;
}
}  // namespace detail

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const T& v) { s->Write(static_cast<const void*>(&v), sizeof(T)); }
  static bool Read(Stream* s, T* v) { return s->ReadFull(v, sizeof(T)); }
};

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_enum_v<T>>> {
  static constexpr bool enabled = true;
  using Base = std::underlying_type_t<T>;
  static void Write(Stream* s, const T& v) { Serializer<Base>::Write(s, static_cast<Base>(v)); }
  static bool Read(Stream* s, T* v) {
    Base b{};
    if (!Serializer<Base>::Read(s, &b)) return false;
    *v = static_cast<T>(b);
    return true;
  }
};

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::string& v) {
    detail::WriteCount(s, v.size());
    if (!v.empty()) s->Write(static_cast<const void*>(v.data()), v.size());
  }
  static bool Read(Stream* s, std::string* v) { return detail::ReadBytes(s, v); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::String& v) {
    detail::WriteCount(s, v.size());
    if (v.size() != 0) s->Write(static_cast<const void*>(v.data()), v.size());
  }
  static bool Read(Stream* s, ffi::String* v) {
    std::string tmp;
    if (!detail::ReadBytes(s, &tmp)) return false;
    *v = ffi::String(std::move(tmp));
    return true;
  }
};

template <>
struct Serializer<ffi::Bytes> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::Bytes& v) {
    detail::WriteCount(s, v.size());
    if (v.size() != 0) s->Write(static_cast<const void*>(v.data()), v.size());
  }
  static bool Read(Stream* s, ffi::Bytes* v) {
    std::string tmp;
    if (!detail::ReadBytes(s, &tmp)) return false;
    *v = ffi::Bytes(std::move(tmp));
    return true;
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::vector<T>& v) {
    detail::WriteCount(s, v.size());
    s->WriteArray(v.data(), v.size());
  }
  static bool Read(Stream* s, std::vector<T>* v) {
    uint64_t n = 0;
    if (!detail::ReadCount(s, &n)) return false;
    v->resize(static_cast<size_t>(n));
    return s->ReadArray(v->data(), v->size());
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::pair<A, B>& v) {
    Serializer<A>::Write(s, v.first);
    Serializer<B>::Write(s, v.second);
  }
  static bool Read(Stream* s, std::pair<A, B>* v) {
    return Serializer<A>::Read(s, &v->first) && Serializer<B>::Read(s, &v->second);
  }
};

template <typename K, typename V>
struct Serializer<std::unordered_map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::unordered_map<K, V>& m) {
    detail::WriteMap<K, V>(s, m);
  }
  static bool Read(Stream* s, std::unordered_map<K, V>* m) {
    m->clear();
    return detail::ReadMap<K, V>(s, [m](K&& k, V&& v) { m->emplace(std::move(k), std::move(v)); });
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::Array<T>& a) {
    detail::WriteCount(s, a.size());
    for (const T& x : a) Serializer<T>::Write(s, x);
  }
  static bool Read(Stream* s, ffi::Array<T>* a) {
    uint64_t n = 0;
    if (!detail::ReadCount(s, &n)) return false;
    for (uint64_t i = 0; i < n; ++i) {
      T x;
      if (!Serializer<T>::Read(s, &x)) return false;
      a->push_back(std::move(x));
    }
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::Map<K, V>& m) { detail::WriteMap<K, V>(s, m); }
  static bool Read(Stream* s, ffi::Map<K, V>* m) {
    return detail::ReadMap<K, V>(s, [m](K&& k, V&& v) { m->Set(std::move(k), std::move(v)); });
  }
};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const DLDataType& t) {
    Serializer<uint8_t>::Write(s, t.code);
    Serializer<uint8_t>::Write(s, t.bits);
    Serializer<uint16_t>::Write(s, t.lanes);
  }
  static bool Read(Stream* s, DLDataType* t) {
    return Serializer<uint8_t>::Read(s, &t->code) && Serializer<uint8_t>::Read(s, &t->bits) &&
           Serializer<uint16_t>::Read(s, &t->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const DLDevice& d) {
    Serializer<int32_t>::Write(s, static_cast<int32_t>(d.device_type));
    Serializer<int32_t>::Write(s, d.device_id);
  }
  static bool Read(Stream* s, DLDevice* d) {
    int32_t type = 0;
    if (!Serializer<int32_t>::Read(s, &type) || !Serializer<int32_t>::Read(s, &d->device_id)) {
      return false;
    }
    d->device_type = static_cast<DLDeviceType>(type);
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SERIALIZER_H_
