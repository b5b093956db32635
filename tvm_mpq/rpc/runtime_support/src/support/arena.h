// tvm-mpq replacement for TVM's src/support/arena.h (not shipped in the wheel):
// scratch memory for one RPC request, all released at once by RecycleAll().
#ifndef TVM_SUPPORT_ARENA_H_
#define TVM_SUPPORT_ARENA_H_

#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

namespace tvm {
namespace support {

class Arena {
 public:
  /*! \brief Uninitialised storage for count objects of T, valid until RecycleAll(). */
  template <typename T>
  T* allocate_(int count = 1) {
    static_assert(alignof(T) <= kAlign, "over-aligned type");
    size_t bytes = sizeof(T) * static_cast<size_t>(std::max(count, 0));
    return static_cast<T*>(Allocate(bytes));
  }
  /*! \brief Forget every allocation; keeps one block for reuse. */
  void RecycleAll() {
    if (blocks_.size() > 1) {
      // keep the largest block
      auto largest = std::max_element(blocks_.begin(), blocks_.end(),
                                      [](const Block& a, const Block& b) { return a.size < b.size; });
      Block keep = std::move(*largest);
      blocks_.clear();
      blocks_.push_back(std::move(keep));
    }
    used_ = 0;
  }

 private:
  static constexpr size_t kAlign = alignof(std::max_align_t);
  static constexpr size_t kBlockBytes = 16 << 10;
  struct Block {
    std::unique_ptr<std::max_align_t[]> data;
    size_t size;
  };

  void* Allocate(size_t bytes) {
    bytes = (bytes + kAlign - 1) / kAlign * kAlign;
    if (blocks_.empty() || used_ + bytes > blocks_.back().size) {
      size_t size = std::max(kBlockBytes, bytes);
      blocks_.push_back(Block{std::make_unique<std::max_align_t[]>(size / kAlign + 1), size});
      used_ = 0;
    }
    char* base = reinterpret_cast<char*>(blocks_.back().data.get());
    void* p = base + used_;
    used_ += bytes;
    return p;
  }

  std::vector<Block> blocks_;
  size_t used_{0};
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_ARENA_H_
