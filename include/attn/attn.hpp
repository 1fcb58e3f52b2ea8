/*
 * libattn for C++17: header-only RAII wrappers over the C API (attn/attn.h).
 *
 *   #include <attn/attn.hpp>
 *   attn::context ctx;                                   // worker threads, last error
 *   std::vector<float> q(B*H*S*D), k(...), v(...), out(...);
 *   auto tq = attn::tensor::wrap(ctx, attn::span<float>(q), {B, H, S, D});
 *   ...
 *   attn::desc d(ctx);
 *   d.causal(ATTN_CAUSAL_TOP_LEFT);
 *   attn::forward(ctx, d, tq, tk, tv, to);                // or attn::plan(...).execute(...)
 *
 * Handles (context, tensor, desc, plan, mha, mha_plan, kvcache, kvcache_plan)
 * are move-only and destroy their C object in the destructor. Caller memory
 * is passed as attn::span<T> (pointer + element count; from a std::vector,
 * std::array, C array or pointer/size) and checked against the tensor's
 * extent before the library sees it. The wrappers borrow, like the C API:
 * a tensor does not own wrapped memory, and a context must outlive what was
 * made with it.
 *
 * Errors: with exceptions enabled, a failing call throws attn::error
 * (status(), function(), what() = the context's message naming the bad
 * argument). Every fallible operation also has a non-throwing form returning
 * attn::result<T> (std::expected-style: ok(), value(), error()), which is the
 * only form compiled when exceptions are disabled (-fno-exceptions).
 *
 * Thread-safety: as the C API (one thread per context and its objects).
 * @since 0.2.0
 */
#ifndef ATTN_ATTN_HPP
#define ATTN_ATTN_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "attn/attn.h"

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define ATTN_CXX_EXCEPTIONS 1
#include <stdexcept>
#else
#define ATTN_CXX_EXCEPTIONS 0
#endif

namespace attn {

/** What a failed call reports: the status, the C function and the message. */
struct error_info {
  attn_status status = ATTN_OK;
  std::string function;
  std::string message;
  /** "function: message (status text)". */
  std::string what() const {
    return function + ": " + (message.empty() ? attn_status_string(status) : message) + " (" +
           attn_status_string(status) + ")";
  }
};

#if ATTN_CXX_EXCEPTIONS
/** Thrown by the throwing forms. */
class error : public std::runtime_error {
 public:
  explicit error(error_info info) : std::runtime_error(info.what()), info_(std::move(info)) {}
  attn_status status() const noexcept { return info_.status; }
  const std::string &function() const noexcept { return info_.function; }
  const std::string &message() const noexcept { return info_.message; }

 private:
  error_info info_;
};
#endif

/** A value or an error_info (std::expected-style). */
template <class T>
class result {
 public:
  result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  result(error_info e) : err_(std::move(e)) {}   // NOLINT
  bool ok() const noexcept { return value_.has_value(); }
  explicit operator bool() const noexcept { return ok(); }
  const error_info &error() const noexcept { return err_; }
  /** The value; throws attn::error when !ok() (without exceptions: check ok() first). */
  T &value() & { return get(); }
  T &&value() && { return std::move(get()); }

 private:
  T &get() {
#if ATTN_CXX_EXCEPTIONS
    if (!ok()) throw attn::error(err_);
#endif
    return *value_;
  }
  std::optional<T> value_;
  error_info err_;
};

/** result<void>. */
template <>
class result<void> {
 public:
  result() = default;
  result(error_info e) : err_(std::move(e)), ok_(false) {}  // NOLINT
  bool ok() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  const error_info &error() const noexcept { return err_; }
  void value() const {
#if ATTN_CXX_EXCEPTIONS
    if (!ok_) throw attn::error(err_);
#endif
  }

 private:
  error_info err_;
  bool ok_ = true;
};

namespace detail {
inline error_info make_error(attn_status st, const char *fn, const attn_context *ctx) {
  error_info e;
  e.status = st;
  e.function = fn;
  if (ctx) e.message = attn_context_last_error(ctx);
  return e;
}
inline result<void> check(attn_status st, const char *fn, const attn_context *ctx) {
  if (st == ATTN_OK) return {};
  return make_error(st, fn, ctx);
}
template <class T>
T unwrap(result<T> r) {
  return std::move(r).value();  // throws attn::error on failure
}
inline void unwrap(result<void> r) { r.value(); }

template <class T, void (*Destroy)(T *)>
struct deleter {
  void operator()(T *p) const noexcept { Destroy(p); }
};
}  // namespace detail

/** Element type of T: float, double, uint8_t. */
template <class T>
struct dtype_of;
template <>
struct dtype_of<float> : std::integral_constant<attn_dtype, ATTN_DTYPE_F32> {};
template <>
struct dtype_of<double> : std::integral_constant<attn_dtype, ATTN_DTYPE_F64> {};
template <>
struct dtype_of<std::uint8_t> : std::integral_constant<attn_dtype, ATTN_DTYPE_U8> {};

/** Caller memory: a pointer and a number of elements (C++20's std::span, reduced). */
template <class T>
class span {
 public:
  constexpr span() noexcept = default;
  constexpr span(T *data, std::size_t size) noexcept : data_(data), size_(size) {}
  template <std::size_t N>
  constexpr span(T (&a)[N]) noexcept : data_(a), size_(N) {}  // NOLINT
  template <class U, std::size_t N,
            class = std::enable_if_t<std::is_same<std::remove_const_t<T>, U>::value>>
  constexpr span(std::array<U, N> &a) noexcept : data_(a.data()), size_(N) {}  // NOLINT
  template <class U, class = std::enable_if_t<std::is_same<std::remove_const_t<T>, U>::value>>
  span(std::vector<U> &v) noexcept : data_(v.data()), size_(v.size()) {}  // NOLINT
  /** A span of const elements over a const vector. */
  template <class U, class = std::enable_if_t<std::is_const<T>::value &&
                                              std::is_same<std::remove_const_t<T>, U>::value>>
  span(const std::vector<U> &v) noexcept : data_(v.data()), size_(v.size()) {}  // NOLINT
  constexpr T *data() const noexcept { return data_; }
  constexpr std::size_t size() const noexcept { return size_; }

 private:
  T *data_ = nullptr;
  std::size_t size_ = 0;
};

/** attn_context: worker threads and the last error message. Move-only. */
class context {
 public:
  /** @param threads 0 = $ATTN_NUM_THREADS or the online cores. Throws attn::error. */
#if ATTN_CXX_EXCEPTIONS
  explicit context(int threads = 0) : context(detail::unwrap(make(threads))) {}
#endif
  /** Non-throwing construction. */
  static result<context> make(int threads = 0) {
    attn_context_options opts;
    attn_context_options_init(&opts);
    opts.num_threads = threads;
    attn_context *c = nullptr;
    attn_status st = attn_context_create(&opts, &c);
    if (st != ATTN_OK) return detail::make_error(st, "attn_context_create", nullptr);
    return context(c);
  }
  attn_context *get() const noexcept { return p_.get(); }
  /** The message of the last failed call made with this context. */
  std::string last_error() const { return attn_context_last_error(p_.get()); }
  int num_threads() const noexcept { return attn_context_num_threads(p_.get()); }

 private:
  explicit context(attn_context *c) noexcept : p_(c) {}
  std::unique_ptr<attn_context, detail::deleter<attn_context, attn_context_destroy>> p_;

 public:
  context(context &&) noexcept = default;
  context &operator=(context &&) noexcept = default;
};

/** attn_tensor: a view of caller memory (wrap) or owned zeroed memory (create). Move-only. */
class tensor {
 public:
  tensor() noexcept = default;
  /** Wrap @p data as a tensor of @p shape (rank 1..4) with element @p strides
   *  (empty = C-contiguous). The span must cover every addressed element:
   *  otherwise ATTN_ERR_SHAPE before the library is called. */
  template <class T>
  static result<tensor> make_wrap(const context &ctx, span<T> data,
                                  std::initializer_list<std::int64_t> shape,
                                  std::initializer_list<std::int64_t> strides = {}) {
    using E = std::remove_const_t<T>;
    std::vector<std::int64_t> sh(shape), st(strides);
    if (!st.empty() && st.size() != sh.size()) {
      error_info e{ATTN_ERR_SHAPE, "attn::tensor::wrap", "strides: count differs from shape"};
      return e;
    }
    // extent = 1 + sum (dim - 1) * stride, in elements (C-contiguous if no strides)
    std::int64_t extent = 1, run = 1;
    for (std::size_t i = sh.size(); i-- > 0;) {
      std::int64_t s = st.empty() ? run : st[i];
      if (sh[i] < 1 || s < 0) {
        extent = -1;  // let the library name the bad dim/stride
        break;
      }
      extent += (sh[i] - 1) * s;
      run *= sh[i];
    }
    if (extent >= 0 && static_cast<std::uint64_t>(extent) > data.size()) {
      error_info e{ATTN_ERR_SHAPE, "attn::tensor::wrap",
                   "data: the span holds " + std::to_string(data.size()) +
                       " elements, the shape and strides address " + std::to_string(extent)};
      return e;
    }
    attn_tensor *t = nullptr;
    attn_status s = attn_tensor_wrap(ctx.get(), dtype_of<E>::value,
                                     static_cast<std::int32_t>(sh.size()), sh.data(),
                                     st.empty() ? nullptr : st.data(),
                                     const_cast<E *>(data.data()), &t);
    if (s != ATTN_OK) return detail::make_error(s, "attn_tensor_wrap", ctx.get());
    return tensor(t);
  }
  /** An owned, zero-filled, C-contiguous tensor. */
  static result<tensor> make_create(const context &ctx, attn_dtype dtype,
                                    std::initializer_list<std::int64_t> shape) {
    std::vector<std::int64_t> sh(shape);
    attn_tensor *t = nullptr;
    attn_status s = attn_tensor_create(ctx.get(), dtype, static_cast<std::int32_t>(sh.size()),
                                       sh.data(), &t);
    if (s != ATTN_OK) return detail::make_error(s, "attn_tensor_create", ctx.get());
    return tensor(t);
  }
#if ATTN_CXX_EXCEPTIONS
  /** Throwing make_wrap(). */
  template <class T>
  static tensor wrap(const context &ctx, span<T> data, std::initializer_list<std::int64_t> shape,
                     std::initializer_list<std::int64_t> strides = {}) {
    return detail::unwrap(make_wrap(ctx, data, shape, strides));
  }
  /** Throwing make_create(). */
  static tensor create(const context &ctx, attn_dtype dtype,
                       std::initializer_list<std::int64_t> shape) {
    return detail::unwrap(make_create(ctx, dtype, shape));
  }
#endif
  attn_tensor *get() const noexcept { return p_.get(); }
  attn_dtype dtype() const noexcept { return attn_tensor_dtype(p_.get()); }
  int rank() const noexcept { return attn_tensor_rank(p_.get()); }
  std::int64_t dim(int axis) const noexcept { return attn_tensor_dim(p_.get(), axis); }
  std::int64_t stride(int axis) const noexcept { return attn_tensor_stride(p_.get(), axis); }
  std::int64_t numel() const noexcept { return attn_tensor_numel(p_.get()); }
  void *data() const noexcept { return attn_tensor_data(p_.get()); }
  tensor(tensor &&) noexcept = default;
  tensor &operator=(tensor &&) noexcept = default;

 private:
  explicit tensor(attn_tensor *t) noexcept : p_(t) {}
  std::unique_ptr<attn_tensor, detail::deleter<attn_tensor, attn_tensor_destroy>> p_;
};

/** attn_desc: what to compute (defaults: exact scaled-dot attention). Setters
 *  return *this (throwing) or result<void> (try_ forms). Arrays and tensors
 *  given to it are borrowed, as in C. Move-only. */
class desc {
 public:
#if ATTN_CXX_EXCEPTIONS
  explicit desc(const context &ctx) : desc(detail::unwrap(make(ctx))) {}
#endif
  static result<desc> make(const context &ctx) {
    attn_desc *d = nullptr;
    attn_status st = attn_desc_create(ctx.get(), &d);
    if (st != ATTN_OK) return detail::make_error(st, "attn_desc_create", ctx.get());
    return desc(d, ctx.get());
  }
  attn_desc *get() const noexcept { return p_.get(); }

#define ATTN_CXX_SETTER_(name, params, args)                                     \
  result<void> try_##name params {                                             \
    return detail::check(attn_desc_set_##name args, "attn_desc_set_" #name, ctx_); \
  }
  ATTN_CXX_SETTER_(variant, (attn_variant v), (p_.get(), v))
  ATTN_CXX_SETTER_(score, (attn_score s), (p_.get(), s))
  ATTN_CXX_SETTER_(scale, (double s), (p_.get(), s))
  ATTN_CXX_SETTER_(causal, (attn_causal c), (p_.get(), c))
  ATTN_CXX_SETTER_(window, (std::int64_t left, std::int64_t right), (p_.get(), left, right))
  ATTN_CXX_SETTER_(key_lengths, (span<const std::int64_t> l),
                   (p_.get(), l.size() ? l.data() : nullptr, static_cast<std::int64_t>(l.size())))
  ATTN_CXX_SETTER_(query_lengths, (span<const std::int64_t> l),
                   (p_.get(), l.size() ? l.data() : nullptr, static_cast<std::int64_t>(l.size())))
  ATTN_CXX_SETTER_(bool_mask, (const tensor &m), (p_.get(), m.get()))
  ATTN_CXX_SETTER_(additive_mask, (const tensor &m), (p_.get(), m.get()))
  ATTN_CXX_SETTER_(alibi, (span<const double> s),
                   (p_.get(), s.size() ? s.data() : nullptr, static_cast<std::int64_t>(s.size())))
  ATTN_CXX_SETTER_(softcap, (double c), (p_.get(), c))
  ATTN_CXX_SETTER_(general_weight, (const tensor &w), (p_.get(), w.get()))
  ATTN_CXX_SETTER_(swin, (std::int64_t h, std::int64_t w, std::int64_t win, std::int64_t shift),
                   (p_.get(), h, w, win, shift))
  ATTN_CXX_SETTER_(global_tokens, (span<const std::int64_t> i),
                   (p_.get(), i.size() ? i.data() : nullptr, static_cast<std::int64_t>(i.size())))
  ATTN_CXX_SETTER_(block_size, (std::int64_t b), (p_.get(), b))
  ATTN_CXX_SETTER_(bigbird, (std::int64_t win, std::int64_t glob, std::int64_t rnd,
                             std::uint64_t seed), (p_.get(), win, glob, rnd, seed))
  ATTN_CXX_SETTER_(block_layout, (const tensor &l), (p_.get(), l.get()))
  ATTN_CXX_SETTER_(features, (std::int64_t m, std::uint64_t seed), (p_.get(), m, seed))
  ATTN_CXX_SETTER_(lowrank, (std::int64_t k, std::uint64_t seed), (p_.get(), k, seed))
#undef ATTN_CXX_SETTER_

#if ATTN_CXX_EXCEPTIONS
  desc &variant(attn_variant v) { return done(try_variant(v)); }
  desc &score(attn_score s) { return done(try_score(s)); }
  desc &scale(double s) { return done(try_scale(s)); }
  desc &causal(attn_causal c) { return done(try_causal(c)); }
  desc &window(std::int64_t left, std::int64_t right) { return done(try_window(left, right)); }
  desc &key_lengths(span<const std::int64_t> l) { return done(try_key_lengths(l)); }
  desc &query_lengths(span<const std::int64_t> l) { return done(try_query_lengths(l)); }
  desc &bool_mask(const tensor &m) { return done(try_bool_mask(m)); }
  desc &additive_mask(const tensor &m) { return done(try_additive_mask(m)); }
  desc &alibi(span<const double> s) { return done(try_alibi(s)); }
  desc &softcap(double c) { return done(try_softcap(c)); }
  desc &general_weight(const tensor &w) { return done(try_general_weight(w)); }
  desc &swin(std::int64_t h, std::int64_t w, std::int64_t win, std::int64_t shift) {
    return done(try_swin(h, w, win, shift));
  }
  desc &global_tokens(span<const std::int64_t> i) { return done(try_global_tokens(i)); }
  desc &block_size(std::int64_t b) { return done(try_block_size(b)); }
  desc &bigbird(std::int64_t win, std::int64_t glob, std::int64_t rnd, std::uint64_t seed) {
    return done(try_bigbird(win, glob, rnd, seed));
  }
  desc &block_layout(const tensor &l) { return done(try_block_layout(l)); }
  desc &features(std::int64_t m, std::uint64_t seed) { return done(try_features(m, seed)); }
  desc &lowrank(std::int64_t k, std::uint64_t seed) { return done(try_lowrank(k, seed)); }
#endif
  desc(desc &&) noexcept = default;
  desc &operator=(desc &&) noexcept = default;

 private:
  desc(attn_desc *d, attn_context *ctx) noexcept : p_(d), ctx_(ctx) {}
#if ATTN_CXX_EXCEPTIONS
  desc &done(result<void> r) {
    r.value();
    return *this;
  }
#endif
  std::unique_ptr<attn_desc, detail::deleter<attn_desc, attn_desc_destroy>> p_;
  attn_context *ctx_ = nullptr;
};

namespace detail {
inline attn_tensor *raw(const tensor *t) noexcept { return t ? t->get() : nullptr; }
}  // namespace detail

/** attn_plan: a descriptor bound to tensor shapes/strides/dtypes; execute any
 *  number of times on tensors laid out the same way. Move-only. */
class plan {
 public:
  /** attn_plan_create; weights and lse may be nullptr. */
  static result<plan> make(const context &ctx, const desc &d, const tensor &q, const tensor &k,
                           const tensor &v, const tensor &out, const tensor *weights = nullptr,
                           const tensor *lse = nullptr) {
    attn_plan *p = nullptr;
    attn_status st = attn_plan_create(ctx.get(), d.get(), q.get(), k.get(), v.get(), out.get(),
                                      detail::raw(weights), detail::raw(lse), &p);
    if (st != ATTN_OK) return detail::make_error(st, "attn_plan_create", ctx.get());
    return plan(p, ctx.get());
  }
  /** attn_plan_execute (no allocation). */
  result<void> try_execute(const tensor &q, const tensor &k, const tensor &v, tensor &out,
                           tensor *weights = nullptr, tensor *lse = nullptr) {
    return detail::check(attn_plan_execute(p_.get(), q.get(), k.get(), v.get(), out.get(),
                                           detail::raw(weights), detail::raw(lse)),
                         "attn_plan_execute", ctx_);
  }
#if ATTN_CXX_EXCEPTIONS
  plan(const context &ctx, const desc &d, const tensor &q, const tensor &k, const tensor &v,
       const tensor &out, const tensor *weights = nullptr, const tensor *lse = nullptr)
      : plan(detail::unwrap(make(ctx, d, q, k, v, out, weights, lse))) {}
  void execute(const tensor &q, const tensor &k, const tensor &v, tensor &out,
               tensor *weights = nullptr, tensor *lse = nullptr) {
    try_execute(q, k, v, out, weights, lse).value();
  }
#endif
  std::size_t workspace_size() const noexcept { return attn_plan_workspace_size(p_.get()); }
  attn_plan *get() const noexcept { return p_.get(); }
  plan(plan &&) noexcept = default;
  plan &operator=(plan &&) noexcept = default;

 private:
  plan(attn_plan *p, attn_context *ctx) noexcept : p_(p), ctx_(ctx) {}
  std::unique_ptr<attn_plan, detail::deleter<attn_plan, attn_plan_destroy>> p_;
  attn_context *ctx_ = nullptr;
};

/** attn_forward: plan, execute, destroy in one call. */
inline result<void> try_forward(const context &ctx, const desc &d, const tensor &q,
                                const tensor &k, const tensor &v, tensor &out,
                                tensor *weights = nullptr, tensor *lse = nullptr) {
  return detail::check(attn_forward(ctx.get(), d.get(), q.get(), k.get(), v.get(), out.get(),
                                    detail::raw(weights), detail::raw(lse)),
                       "attn_forward", ctx.get());
}
#if ATTN_CXX_EXCEPTIONS
/** Throwing try_forward(). */
inline void forward(const context &ctx, const desc &d, const tensor &q, const tensor &k,
                    const tensor &v, tensor &out, tensor *weights = nullptr,
                    tensor *lse = nullptr) {
  try_forward(ctx, d, q, k, v, out, weights, lse).value();
}
#endif

/** attn_mha_plan: a multi-head layer planned for these tensors. Move-only. */
class mha_plan {
 public:
  result<void> try_execute(const tensor &query, const tensor &key, const tensor &value,
                           const tensor *key_padding_mask, tensor &out,
                           tensor *weights = nullptr) {
    return detail::check(attn_mha_plan_execute(p_.get(), query.get(), key.get(), value.get(),
                                               detail::raw(key_padding_mask), out.get(),
                                               detail::raw(weights)),
                         "attn_mha_plan_execute", ctx_);
  }
#if ATTN_CXX_EXCEPTIONS
  void execute(const tensor &query, const tensor &key, const tensor &value,
               const tensor *key_padding_mask, tensor &out, tensor *weights = nullptr) {
    try_execute(query, key, value, key_padding_mask, out, weights).value();
  }
#endif
  std::size_t workspace_size() const noexcept { return attn_mha_plan_workspace_size(p_.get()); }
  attn_mha_plan *get() const noexcept { return p_.get(); }
  mha_plan(mha_plan &&) noexcept = default;
  mha_plan &operator=(mha_plan &&) noexcept = default;

 private:
  friend class mha;
  mha_plan(attn_mha_plan *p, attn_context *ctx) noexcept : p_(p), ctx_(ctx) {}
  std::unique_ptr<attn_mha_plan, detail::deleter<attn_mha_plan, attn_mha_plan_destroy>> p_;
  attn_context *ctx_ = nullptr;
};

/** attn_mha: nn.MultiheadAttention-style layer (heads.h). The weight tensors
 *  in attn_mha_weights are borrowed and must outlive the layer. Move-only. */
class mha {
 public:
  static result<mha> make(const context &ctx, const attn_mha_config &cfg,
                          const attn_mha_weights &w) {
    attn_mha *m = nullptr;
    attn_status st = attn_mha_create(ctx.get(), &cfg, &w, &m);
    if (st != ATTN_OK) return detail::make_error(st, "attn_mha_create", ctx.get());
    return mha(m, ctx.get());
  }
  /** attn_mha_plan_create; desc, key_padding_mask and weights may be nullptr. */
  result<mha_plan> make_plan(const desc *d, const tensor &query, const tensor &key,
                             const tensor &value, const tensor *key_padding_mask,
                             const tensor &out, const tensor *weights = nullptr) const {
    attn_mha_plan *p = nullptr;
    attn_status st = attn_mha_plan_create(p_.get(), d ? d->get() : nullptr, query.get(),
                                          key.get(), value.get(), detail::raw(key_padding_mask),
                                          out.get(), detail::raw(weights), &p);
    if (st != ATTN_OK) return detail::make_error(st, "attn_mha_plan_create", ctx_);
    return mha_plan(p, ctx_);
  }
#if ATTN_CXX_EXCEPTIONS
  mha(const context &ctx, const attn_mha_config &cfg, const attn_mha_weights &w)
      : mha(detail::unwrap(make(ctx, cfg, w))) {}
  mha_plan plan(const desc *d, const tensor &query, const tensor &key, const tensor &value,
                const tensor *key_padding_mask, const tensor &out,
                const tensor *weights = nullptr) const {
    return detail::unwrap(make_plan(d, query, key, value, key_padding_mask, out, weights));
  }
#endif
  attn_mha *get() const noexcept { return p_.get(); }
  mha(mha &&) noexcept = default;
  mha &operator=(mha &&) noexcept = default;

 private:
  mha(attn_mha *m, attn_context *ctx) noexcept : p_(m), ctx_(ctx) {}
  std::unique_ptr<attn_mha, detail::deleter<attn_mha, attn_mha_destroy>> p_;
  attn_context *ctx_ = nullptr;
};

/** attn_kvcache_plan: new queries attending to a cache. Move-only. */
class kvcache_plan {
 public:
  /** query_counts: empty = n for every batch item, else B values. */
  result<void> try_execute(const tensor &q, tensor &out, tensor *lse = nullptr,
                           span<const std::int64_t> query_counts = {}) {
    return detail::check(attn_kvcache_plan_execute(p_.get(), q.get(), out.get(),
                                                   detail::raw(lse),
                                                   query_counts.size() ? query_counts.data()
                                                                       : nullptr),
                         "attn_kvcache_plan_execute", ctx_);
  }
#if ATTN_CXX_EXCEPTIONS
  void execute(const tensor &q, tensor &out, tensor *lse = nullptr,
               span<const std::int64_t> query_counts = {}) {
    try_execute(q, out, lse, query_counts).value();
  }
#endif
  std::size_t workspace_size() const noexcept {
    return attn_kvcache_plan_workspace_size(p_.get());
  }
  attn_kvcache_plan *get() const noexcept { return p_.get(); }
  kvcache_plan(kvcache_plan &&) noexcept = default;
  kvcache_plan &operator=(kvcache_plan &&) noexcept = default;

 private:
  friend class kvcache;
  kvcache_plan(attn_kvcache_plan *p, attn_context *ctx) noexcept : p_(p), ctx_(ctx) {}
  std::unique_ptr<attn_kvcache_plan,
                  detail::deleter<attn_kvcache_plan, attn_kvcache_plan_destroy>> p_;
  attn_context *ctx_ = nullptr;
};

/** attn_kvcache: keys and values of every decoded position. Move-only. */
class kvcache {
 public:
  static result<kvcache> make(const context &ctx, const attn_kvcache_config &cfg) {
    attn_kvcache *c = nullptr;
    attn_status st = attn_kvcache_create(ctx.get(), &cfg, &c);
    if (st != ATTN_OK) return detail::make_error(st, "attn_kvcache_create", ctx.get());
    return kvcache(c, ctx.get());
  }
  /** attn_kvcache_append (copied in); counts: empty = n rows for every item. */
  result<void> try_append(const tensor &k_new, const tensor &v_new,
                          span<const std::int64_t> counts = {}) {
    return detail::check(attn_kvcache_append(p_.get(), k_new.get(), v_new.get(),
                                             counts.size() ? counts.data() : nullptr),
                         "attn_kvcache_append", ctx_);
  }
  /** attn_kvcache_truncate: B new lengths. */
  result<void> try_truncate(span<const std::int64_t> lengths) {
    return detail::check(attn_kvcache_truncate(p_.get(), lengths.data()),
                         "attn_kvcache_truncate", ctx_);
  }
  /** attn_kvcache_plan_create; desc and lse may be nullptr. */
  result<kvcache_plan> make_plan(const desc *d, const tensor &q, const tensor &out,
                                 const tensor *lse = nullptr) {
    attn_kvcache_plan *p = nullptr;
    attn_status st = attn_kvcache_plan_create(p_.get(), d ? d->get() : nullptr, q.get(),
                                              out.get(), detail::raw(lse), &p);
    if (st != ATTN_OK) return detail::make_error(st, "attn_kvcache_plan_create", ctx_);
    return kvcache_plan(p, ctx_);
  }
#if ATTN_CXX_EXCEPTIONS
  kvcache(const context &ctx, const attn_kvcache_config &cfg)
      : kvcache(detail::unwrap(make(ctx, cfg))) {}
  void append(const tensor &k_new, const tensor &v_new, span<const std::int64_t> counts = {}) {
    try_append(k_new, v_new, counts).value();
  }
  void truncate(span<const std::int64_t> lengths) { try_truncate(lengths).value(); }
  kvcache_plan plan(const desc *d, const tensor &q, const tensor &out,
                    const tensor *lse = nullptr) {
    return detail::unwrap(make_plan(d, q, out, lse));
  }
#endif
  std::int64_t length(std::int64_t b) const noexcept { return attn_kvcache_length(p_.get(), b); }
  std::int64_t capacity() const noexcept { return attn_kvcache_capacity(p_.get()); }
  std::size_t memory_size() const noexcept { return attn_kvcache_memory_size(p_.get()); }
  attn_kvcache *get() const noexcept { return p_.get(); }
  kvcache(kvcache &&) noexcept = default;
  kvcache &operator=(kvcache &&) noexcept = default;

 private:
  kvcache(attn_kvcache *c, attn_context *ctx) noexcept : p_(c), ctx_(ctx) {}
  std::unique_ptr<attn_kvcache, detail::deleter<attn_kvcache, attn_kvcache_destroy>> p_;
  attn_context *ctx_ = nullptr;
};

/** The run-time library version, e.g. "0.2.0". */
inline std::string version() { return attn_version_string(); }

}  // namespace attn

#endif /* ATTN_ATTN_HPP */
