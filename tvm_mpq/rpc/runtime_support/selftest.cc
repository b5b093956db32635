// Host self-test of the runtime_support headers (tests/test_build_runtime.py compiles it with the
// host g++ against the wheel's tvm_ffi headers and library). Prints "OK <n>" when every check
// passes, otherwise "FAIL <what>" lines and exits 1. Also dumps serialized bytes as hex so the
// test can compare the wire format with what Python's struct module expects.
#include <tvm/support/io.h>
#include <tvm/support/serializer.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "support/arena.h"
#include "support/base64.h"
#include "support/bytes_io.h"
#include "support/ring_buffer.h"
#include "support/utils.h"

namespace {
int g_checks = 0;
int g_failed = 0;

void Check(bool ok, const char* what) {
  ++g_checks;
  if (!ok) {
    ++g_failed;
    std::printf("FAIL %s\n", what);
  }
}

std::string Hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::string B64(const std::string& in) {
  std::string out;
  tvm::support::BytesOutStream os(&out);
  tvm::support::Base64OutStream b64(&os);
  b64.Write(static_cast<const void*>(in.data()), in.size());
  b64.Finish();
  return out;
}

std::string UnB64(const std::string& text) {
  tvm::support::BytesInStream is(text);
  tvm::support::Base64InStream b64(&is);
  b64.InitPosition();
  std::string out;
  char c;
  while (b64.Read(&c, 1) == 1) out.push_back(c);
  return out;
}
}  // namespace

int main() {
  using namespace tvm::support;  // NOLINT
  // serializer wire format: printed for the Python side to check
  std::string blob;
  {
    BytesOutStream os(&blob);
    Stream* s = &os;
    s->Write<int32_t>(-2);
    s->Write<uint64_t>(7);
    s->Write<double>(1.5);
    s->Write(std::string("ab"));
    s->Write(std::vector<int16_t>{1, -1});
    DLDataType t{2, 32, 1};
    s->Write(t);
    DLDevice d{kDLCPU, 3};
    s->Write(d);
    s->Write(tvm::ffi::Array<tvm::ffi::String>{"x", "yz"});
  }
  std::printf("WIRE %s\n", Hex(blob).c_str());
  {
    BytesInStream is(blob);
    Stream* s = &is;
    int32_t i = 0;
    uint64_t u = 0;
    double f = 0;
    std::string str;
    std::vector<int16_t> v;
    DLDataType t{};
    DLDevice d{};
    tvm::ffi::Array<tvm::ffi::String> arr;
    Check(s->Read(&i) && i == -2, "int32 round trip");
    Check(s->Read(&u) && u == 7, "uint64 round trip");
    Check(s->Read(&f) && f == 1.5, "double round trip");
    Check(s->Read(&str) && str == "ab", "string round trip");
    Check(s->Read(&v) && v.size() == 2 && v[0] == 1 && v[1] == -1, "vector round trip");
    Check(s->Read(&t) && t.code == 2 && t.bits == 32 && t.lanes == 1, "DLDataType round trip");
    Check(s->Read(&d) && d.device_type == kDLCPU && d.device_id == 3, "DLDevice round trip");
    Check(s->Read(&arr) && arr.size() == 2 && arr[1] == "yz", "Array<String> round trip");
    Check(!s->Read(&i), "read past the end fails");
  }
  {
    std::unordered_map<std::string, int32_t> m{{"k", 5}};
    std::string b;
    BytesOutStream os(&b);
    os.Write(m);
    BytesInStream is(b);
    std::unordered_map<std::string, int32_t> back;
    Check(is.Read(&back) && back.size() == 1 && back["k"] == 5, "unordered_map round trip");
  }
  // base64: RFC 4648 test vectors
  const char* plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
  const char* coded[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
  for (int k = 0; k < 7; ++k) {
    Check(B64(plain[k]) == coded[k], "base64 encode vector");
    Check(UnB64(coded[k]) == plain[k], "base64 decode vector");
  }
  std::string bin;
  for (int k = 0; k < 5000; ++k) bin.push_back(static_cast<char>((k * 37) & 255));
  Check(UnB64("  \n" + B64(bin)) == bin, "base64 binary round trip (leading whitespace)");
  // ring buffer: interleaved pushes/pops across growth and compaction
  {
    RingBuffer rb;
    std::string expect, got;
    unsigned next = 0;
    for (int round = 0; round < 200; ++round) {
      std::string chunk;
      for (int k = 0; k < (round * 131) % 9000 + 1; ++k) chunk.push_back(static_cast<char>(next++));
      rb.Write(chunk.data(), chunk.size());
      expect += chunk;
      size_t take = rb.bytes_available() / 2 + 1;
      std::string part(take, '\0');
      rb.Read(part.data(), take);
      got += part;
      if (round % 3 == 0 && rb.bytes_available() != 0) {
        rb.ReadWithCallback(
            [&got](const void* p, size_t n) {
              size_t m = n > 100 ? 100 : n;
              got.append(static_cast<const char*>(p), m);
              return m;
            },
            rb.bytes_available());
      }
      if (round % 5 == 0) {
        std::string more = "zz" + std::to_string(round);
        size_t n = rb.WriteWithCallback(
            [&more](void* p, size_t cap) {
              size_t m = more.size() < cap ? more.size() : cap;
              std::memcpy(p, more.data(), m);
              return m;
            },
            64);
        expect += more.substr(0, n);
      }
    }
    std::string rest(rb.bytes_available(), '\0');
    rb.Read(rest.data(), rest.size());
    got += rest;
    Check(got == expect, "ring buffer keeps byte order");
    Check(rb.bytes_available() == 0, "ring buffer drained");
  }
  // arena
  {
    Arena a;
    int* xs = a.allocate_<int>(1000);
    double* ys = a.allocate_<double>(10);
    for (int k = 0; k < 1000; ++k) xs[k] = k;
    for (int k = 0; k < 10; ++k) ys[k] = k * 0.5;
    Check(xs[999] == 999 && ys[9] == 4.5, "arena allocations are distinct");
    Check(reinterpret_cast<uintptr_t>(ys) % alignof(double) == 0, "arena alignment");
    a.RecycleAll();
    char* big = a.allocate_<char>(100000);
    big[99999] = 1;
    Check(big[99999] == 1, "arena large block");
  }
  Check(StartsWith("RPCSessionTimeoutError: x", "RPCSessionTimeoutError: "), "StartsWith");
  Check(!StartsWith("RPC", "RPCSession"), "StartsWith shorter");
  Check(IsNumber("0123") && !IsNumber("") && !IsNumber("1a"), "IsNumber");
  if (g_failed != 0) return 1;
  std::printf("OK %d\n", g_checks);
  return 0;
}
